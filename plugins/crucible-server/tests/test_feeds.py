"""The shared per-job feed encodes each event as SSE bytes once for all its subscribers and
sends the events that are ready together, one chunk per subscriber."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from crucible_server.feeds import Feeds

from crucible_core.ir.work import TERMINAL_STATUSES


def test_subscribers_of_one_job_share_each_encoded_event(start_server, http) -> None:
    """A real ``ticks`` job run by a real worker; then two SSE subscribers and one plain one."""
    srv = start_server(tokens=None, workers=1)
    job = {
        "kind": "custom",
        "payload": {"target": "server_test_jobs:ticks", "args": {"n": 12}},
    }
    job_id = http(srv).post("/v1/jobs", json=job).json()["job_id"]
    deadline = time.monotonic() + 120
    while srv.scheduler.get(job_id).status not in TERMINAL_STATUSES:
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)

    async def in_thread(fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def go() -> tuple[list[Any], list[Any], list[Any]]:
        feeds = Feeds(srv.scheduler, 0.01, in_thread)

        async def take(sse: bool) -> list[Any]:
            return [item async for item in feeds.stream(job_id, 0, sse=sse)]

        a, b, plain = await asyncio.gather(take(True), take(True), take(False))
        return a, b, plain

    a, b, plain = asyncio.run(go())
    assert len(plain) >= 14  # 12 ticks and the job's own events, then end
    assert all(isinstance(x, bytes) for x in a)
    assert len(a) < len(plain)  # the events ready at once went out as one chunk
    assert all(x is y for x, y in zip(a, b, strict=True))  # encoded once, shared
    sent = b"".join(a).decode()
    expected = "".join(
        (f"id: {item['id']}\r\n" if "id" in item else "")
        + f"event: {item['event']}\r\ndata: {item['data']}\r\n\r\n"
        for item in plain
    )
    assert sent == expected  # the same events, in order, nothing lost or repeated

"""The shared per-job feed encodes each event as SSE bytes once for all its subscribers and
sends the events that are ready together, one chunk per subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
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


def test_the_stream_waits_for_the_final_event_written_after_the_status_changed(
    home: Path,
) -> None:
    """A worker writes a job's final ``job.state`` line just after the status change: the
    stream must not end before it. The job's row is real (SQLite, claimed and completed
    through the scheduler); its telemetry lines are written here, the last one 0.3 s after
    the job is already terminal, to make that ordering certain."""
    import json

    from crucible_core.ir.work import Job
    from crucible_core.queue.scheduler import Scheduler

    def line(kind: str, **data: Any) -> str:
        ev = {"kind": kind, "job_id": job.id, "ts": time.time(), "step": None, "epoch": None}
        return json.dumps({**ev, "data": data}) + "\n"

    with Scheduler() as sched:
        job = sched.enqueue(Job(kind="custom", payload={"target": "x:y"}))
        claimed = sched.claim("w1")
        assert claimed is not None
        sched.complete(job.id, 1, worker_id="w1")
        telemetry = home / "runs" / job.id / "telemetry.jsonl"
        telemetry.parent.mkdir(parents=True)
        telemetry.write_text(line("test.tick", i=1) + line("test.tick", i=2))

        async def in_thread(fn: Any, *args: Any) -> Any:
            return fn(*args)

        async def go() -> list[Any]:
            feeds = Feeds(sched, 0.02, in_thread)

            async def late() -> None:
                await asyncio.sleep(0.3)
                with telemetry.open("a") as fh:
                    fh.write(line("job.state", status="succeeded"))

            writer = asyncio.ensure_future(late())
            items = [item async for item in feeds.stream(job.id, 0)]
            await writer
            return items

        items = asyncio.run(go())
    assert [i["event"] for i in items] == ["test.tick", "test.tick", "job.state", "end"]


def _open_stream(srv: Any, job_id: str, got: list[str], done: threading.Event) -> None:
    import httpx

    try:
        with httpx.stream("GET", f"{srv.url}/v1/jobs/{job_id}/events", timeout=30) as r:
            for line in r.iter_lines():
                got.append(line)
    except httpx.HTTPError:
        got.append("<error>")
    finally:
        done.set()


def test_a_client_that_leaves_is_dropped_and_the_job_poller_stops(start_server, http) -> None:
    """Each stream watches its connection: when the only client goes away mid-stream (on a
    job that never ends), the feed forgets it and stops polling, heartbeats or not."""
    srv = start_server(tokens=None, workers=0, heartbeat_s=0.2)
    feeds = srv.app.state.crucible_feeds
    job_id = http(srv).post("/v1/jobs", json={"kind": "experiment_step", "payload": {}}).json()
    job_id = job_id["job_id"]
    with http(srv).stream("GET", f"/v1/jobs/{job_id}/events") as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith(":")) == ": ping"
        assert job_id in feeds._feeds
        poller = feeds._feeds[job_id].task
    deadline = time.monotonic() + 10
    while job_id in feeds._feeds:
        assert time.monotonic() < deadline, "the feed kept a subscriber that left"
        time.sleep(0.02)
    while not poller.done():
        assert time.monotonic() < deadline, "the job's poller kept running"
        time.sleep(0.02)


def test_stopping_the_server_ends_open_streams_at_once(start_server, http) -> None:
    """A stream of a job that never ends would hold uvicorn's graceful shutdown for its whole
    timeout: the server ends every stream first (no ``end`` event: the client resumes with
    ``Last-Event-ID`` at the next server), and stops well within the timeout."""
    srv = start_server(tokens=None, workers=0)
    job_id = http(srv).post("/v1/jobs", json={"kind": "experiment_step", "payload": {}}).json()
    job_id = job_id["job_id"]
    got: list[str] = []
    done = threading.Event()
    reader = threading.Thread(target=_open_stream, args=(srv, job_id, got, done), daemon=True)
    reader.start()
    deadline = time.monotonic() + 10
    while job_id not in srv.app.state.crucible_feeds._feeds:
        assert time.monotonic() < deadline, "the stream did not open"
        time.sleep(0.02)
    t0 = time.monotonic()
    srv.stop()
    took = time.monotonic() - t0
    assert done.wait(10)
    assert took < srv.grace_s / 2, f"stop took {took:.1f} s (graceful timeout {srv.grace_s} s)"
    assert "event: end" not in got
    assert "<error>" not in got


def test_stopping_the_server_closes_websocket_streams_as_a_restart(start_server, http) -> None:
    """The WebSocket equivalent: the stream closes with 1012 ("service restart"), not 1000
    (which says the job's stream is complete), and at once."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    srv = start_server(tokens=None, workers=0)
    job_id = http(srv).post("/v1/jobs", json={"kind": "experiment_step", "payload": {}}).json()
    job_id = job_id["job_id"]
    ws_url = srv.url.replace("http://", "ws://")
    with connect(f"{ws_url}/v1/jobs/{job_id}/ws", open_timeout=30) as ws:
        deadline = time.monotonic() + 10
        while job_id not in srv.app.state.crucible_feeds._feeds:
            assert time.monotonic() < deadline, "the stream did not open"
            time.sleep(0.02)
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        messages: list[Any] = []
        with contextlib.suppress(ConnectionClosed):
            messages.extend(ws)
        stopper.join(30)
        assert ws.close_code == 1012
        assert messages == []

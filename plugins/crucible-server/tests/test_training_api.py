"""The README main job (examples/dates-local.toml, shortened) through the API on a real
uvicorn: submitted by the typed client, streamed to completion over SSE, a second job
cancelled mid-run, a checkpoint downloaded with its sha256 and by byte ranges."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from crucible_server.client import AsyncClient, Client
from crucible_server.tokens import TokenStore

from crucible_core import errors as E
from crucible_core.ir import TrainingJob, decode_file

ROOT = Path(__file__).resolve().parents[3]


def _dates_job(steps: int, save_every: int) -> dict[str, Any]:
    """The README's main job with fewer steps; relative paths stay relative (server resolves)."""
    raw: dict[str, Any] = msgspec.to_builtins(
        decode_file(ROOT / "examples" / "dates-local.toml", TrainingJob)
    )
    raw["learning_config"]["max_steps"] = steps
    raw["checkpoint_policy"].update({"save_every": save_every, "keep_last": 2})
    raw["validation_spec"] = {"every_n_steps": 1000, "metrics": ["loss"]}
    raw["dataset_spec"]["uri"] = "examples/data/dates.jsonl"
    return raw


@pytest.mark.slow
def test_main_job_streams_to_completion_and_checkpoint_downloads(
    start_server, tokens: TokenStore
) -> None:
    tok, _ = tokens.create("acme", ["jobs:read", "jobs:write", "artifacts:read"])
    srv = start_server(tokens=tokens, workers=1)
    with Client(srv.url, token=tok, timeout=120) as c:
        sub = c.submit(_dates_job(steps=6, save_every=3))
        events = list(c.events(sub.job_id))
        assert events[-1].event == "end"
        assert events[-1].data["status"] == "succeeded"
        ids = [e.id for e in events[:-1]]
        assert ids == list(range(1, len(ids) + 1))  # numbered lines, none skipped
        steps = [e.data["step"] for e in events if e.event == "train.step"]
        assert steps == list(range(1, 7))
        view = c.get(sub.job_id)
        assert view.job.status == "succeeded"
        assert view.progress["step"] == 6
        assert isinstance(view.progress["loss"], float)
        files = {a.path: a for a in c.artifacts(sub.job_id).items}
        ckpts = [p for p in files if p.startswith("checkpoints/") and p.endswith(".safetensors")]
        assert ckpts, sorted(files)
        path = ckpts[0]
        content, announced = c.download(sub.job_id, path)
        assert hashlib.sha256(content).hexdigest() == announced
        on_disk = srv.scheduler.path.parent / "runs" / sub.job_id / path
        assert content == on_disk.read_bytes()
        assert len(content) == files[path].size
        # Range: two halves put back together are the file.
        http = c._http
        half = len(content) // 2
        a = http.get(
            f"/v1/jobs/{sub.job_id}/artifacts/{path}", headers={"Range": f"bytes=0-{half - 1}"}
        )
        b = http.get(f"/v1/jobs/{sub.job_id}/artifacts/{path}", headers={"Range": f"bytes={half}-"})
        assert a.status_code == 206
        assert b.status_code == 206
        assert a.content + b.content == content
        with pytest.raises(E.NotFound):
            c.download(sub.job_id, "../../crucible.db")


@pytest.mark.slow
def test_cancel_a_training_job_mid_run(start_server, tokens: TokenStore) -> None:
    tok, _ = tokens.create("acme", ["jobs:read", "jobs:write"])
    srv = start_server(tokens=tokens, workers=1)
    with Client(srv.url, token=tok, timeout=120) as c:
        sub = c.submit(_dates_job(steps=2000, save_every=1000))
        seen: list[int] = []
        end: dict[str, Any] = {}
        for ev in c.events(sub.job_id):
            if ev.event == "train.step":
                seen.append(ev.data["step"])
                if len(seen) == 3:
                    assert c.cancel(sub.job_id).status in ("running", "cancelled")
            if ev.event == "end":
                end = ev.data
        assert end["status"] == "cancelled"
        assert 3 <= max(seen) < 2000
        assert c.get(sub.job_id).job.status == "cancelled"


def test_sse_resume_after_a_dropped_connection_loses_and_repeats_nothing(
    start_server, http, tokens: TokenStore
) -> None:
    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=1)
    with Client(srv.url, token=tok, timeout=60) as c:
        job = {
            "kind": "custom",
            "payload": {"target": "server_test_jobs:ticks", "args": {"n": 40, "delay_s": 0.02}},
        }
        job_id = c.submit(job).job_id
        first: list[int] = []
        raw = http(srv, tok)
        # Read a few live events, then drop the connection mid-stream.
        with raw.stream("GET", f"/v1/jobs/{job_id}/events") as r:
            for line in r.iter_lines():
                if line.startswith("id:"):
                    first.append(int(line[3:]))
                    if len(first) == 5:
                        break
        rest = [e for e in c.events(job_id, last_event_id=first[-1])]
        assert rest[-1].event == "end"
        ids = first + [e.id for e in rest[:-1]]
        assert ids == list(range(1, len(ids) + 1))
        # A replay from the start gives the same events with the same ids, every tick once.
        again = [e for e in c.events(job_id) if e.id is not None]
        assert [e.id for e in again] == ids
        assert [e.data["data"]["i"] for e in again if e.event == "test.tick"] == list(range(1, 41))
        assert [e.data for e in again if e.id > first[-1]] == [e.data for e in rest[:-1]]
    # A Last-Event-ID that is not a number is a problem, not a silent restart.
    r = http(srv, tok).get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "x"})
    assert r.status_code == 400
    assert r.json()["code"] == "config_error"


def test_async_client_submits_and_streams(start_server, tokens: TokenStore) -> None:
    import asyncio

    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=1)

    async def go() -> list[str]:
        async with AsyncClient(srv.url, token=tok, timeout=60) as c:
            job = {
                "kind": "custom",
                "payload": {"target": "server_test_jobs:ticks", "args": {"n": 3}},
            }
            sub = await c.submit(job, idempotency_key="once")
            again = await c.submit(job, idempotency_key="once")
            assert again.job_id == sub.job_id
            kinds = [e.event async for e in c.events(sub.job_id)]
            assert (await c.get(sub.job_id)).job.result == 3
            with pytest.raises(E.NotFound):
                await c.get("job-missing")
            return kinds

    kinds = asyncio.run(go())
    assert kinds.count("test.tick") == 3
    assert kinds[-1] == "end"


def test_heartbeats_keep_an_idle_stream_alive(start_server, http, tokens: TokenStore) -> None:
    tok, _ = tokens.create("acme", ["jobs:read", "jobs:write"])
    srv = start_server(tokens=tokens, workers=0, heartbeat_s=0.2)
    c = http(srv, tok)
    job_id = c.post("/v1/jobs", json={"kind": "experiment_step", "payload": {}}).json()["job_id"]
    comments: list[str] = []
    stop = threading.Timer(5.0, lambda: None)
    stop.start()
    t0 = time.monotonic()
    with c.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        for line in r.iter_lines():
            if line.startswith(":"):
                comments.append(line)
                if len(comments) == 3:
                    break
            assert time.monotonic() - t0 < 10
    stop.cancel()
    assert len(comments) == 3


def test_websocket_stream_equals_the_sse_stream(start_server, tokens: TokenStore) -> None:
    import json as _json

    from websockets.sync.client import connect

    tok, _ = tokens.create("acme", ["admin"])
    other, _ = tokens.create("globex", ["admin"])
    srv = start_server(tokens=tokens, workers=1)
    ws_url = srv.url.replace("http://", "ws://")
    with Client(srv.url, token=tok, timeout=60) as c:
        job = {"kind": "custom", "payload": {"target": "server_test_jobs:ticks", "args": {"n": 12}}}
        job_id = c.submit(job).job_id
        sse = list(c.events(job_id))
        auth = {"Authorization": f"Bearer {tok}"}
        with connect(
            f"{ws_url}/v1/jobs/{job_id}/ws", additional_headers=auth, open_timeout=30
        ) as ws:
            got = [_json.loads(m) for m in ws]
        assert [(m.get("id"), m["event"]) for m in got] == [(e.id, e.event) for e in sse]
        assert got[-1]["data"]["status"] == "succeeded"
        resume_at = sse[4].id
        url = f"{ws_url}/v1/jobs/{job_id}/ws?last_event_id={resume_at}"
        with connect(url, additional_headers=auth, open_timeout=30) as ws:
            resumed = [_json.loads(m) for m in ws]
        assert [m.get("id") for m in resumed] == [e.id for e in sse[5:]]
        # Another tenant: one problem message, close code 4000 + 404.
        with connect(
            f"{ws_url}/v1/jobs/{job_id}/ws",
            additional_headers={"Authorization": f"Bearer {other}"},
            open_timeout=30,
        ) as ws:
            problem = _json.loads(ws.recv(timeout=30))
            with pytest.raises(Exception):  # noqa: B017, PT011 - the close ends the iteration
                ws.recv(timeout=30)
        assert problem["code"] == "not_found"
        assert ws.close_code == 4404


def test_many_subscribers_of_one_job_each_get_every_event(start_server, tokens: TokenStore) -> None:
    import asyncio

    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=1)
    job = {
        "kind": "custom",
        "payload": {"target": "server_test_jobs:ticks", "args": {"n": 30, "delay_s": 0.01}},
    }

    async def go() -> list[list[int | None]]:
        async with AsyncClient(srv.url, token=tok, timeout=60) as c:
            job_id = (await c.submit(job)).job_id

            async def one(after: int | None) -> list[int | None]:
                return [e.id async for e in c.events(job_id, last_event_id=after)]

            return list(await asyncio.gather(*(one(None) for _ in range(20)), one(10)))

    streams = asyncio.run(go())
    full = streams[0]
    assert full[-1] is None  # the end event
    assert full[:-1] == list(range(1, len(full)))
    assert all(s == full for s in streams[:20])
    assert streams[20] == [i for i in full if i is None or i > 10]

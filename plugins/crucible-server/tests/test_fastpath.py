"""The fast path (crucible_server.fastpath) answers exactly as the FastAPI routes do.

Two real uvicorn servers on 127.0.0.1 share one CRUCIBLE_HOME (one job database,
one token store): one with the fast path (the default), one with
``fast_path=False``, where FastAPI's routes answer. Every request below goes to
both and the answers must match: status, content type, the headers a client acts
on and the JSON body (for new submissions, up to the new job's id).
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from crucible_server.runner import ApiServer
from crucible_server.tokens import TokenStore

from crucible_core.ir.backend import CheckpointRef

LIMIT = 4096
STEP = {"kind": "experiment_step", "payload": {}}


def _answer(r: httpx.Response, new_id: str | None = None, base: Any = "") -> tuple[Any, ...]:
    text = r.text
    if new_id is not None:
        text = text.replace(new_id, "<new>")
    location = r.headers.get("location")
    return (
        r.status_code,
        r.headers.get("content-type"),
        r.headers.get("www-authenticate"),
        r.headers.get("retry-after"),
        location and location.removeprefix(str(base).rstrip("/")),
        httpx.Response(200, text=text).json() if text else None,
    )


@pytest.fixture
def pair(start_server, tokens: TokenStore) -> tuple[ApiServer, ApiServer]:
    fast = start_server(tokens=tokens, workers=0, max_body_bytes=LIMIT)
    slow = start_server(tokens=tokens, workers=0, max_body_bytes=LIMIT, fast_path=False)
    assert fast.settings.fast_path
    assert not slow.settings.fast_path
    return fast, slow


@pytest.fixture
def clients(pair: tuple[ApiServer, ApiServer]) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    fast, slow = pair
    with (
        httpx.Client(base_url=fast.url, timeout=30) as a,
        httpx.Client(base_url=slow.url, timeout=30) as b,
    ):
        yield a, b


def _same(clients: tuple[httpx.Client, httpx.Client], method: str, url: str, **kw: Any) -> Any:
    """Both servers' answers to one request (``stream``: a callable making its body)."""
    stream = kw.pop("stream", None)
    fast, slow = (
        c.request(method, url, **kw, **({"content": stream()} if stream else {})) for c in clients
    )
    assert _answer(fast, base=clients[0].base_url) == _answer(slow, base=clients[1].base_url), (
        fast.text,
        slow.text,
    )
    return fast


def test_get_job_answers_match(clients, tokens: TokenStore) -> None:
    acme, _ = tokens.create("acme", ["jobs:read", "jobs:write"])
    other, _ = tokens.create("other", ["jobs:read"])
    writer, _ = tokens.create("acme", ["jobs:write"])
    auth = {"Authorization": f"Bearer {acme}"}
    job_id = clients[0].post("/v1/jobs", json=STEP, headers=auth).json()["job_id"]

    ok = _same(clients, "GET", f"/v1/jobs/{job_id}", headers=auth)
    assert ok.status_code == 200
    assert ok.json()["job"]["id"] == job_id
    cases: list[tuple[str, dict[str, str], int]] = [
        (f"/v1/jobs/{job_id}", {"Authorization": f"Bearer {other}"}, 404),  # not its tenant
        (f"/v1/jobs/{job_id}", {"Authorization": f"Bearer {writer}"}, 403),  # no jobs:read
        (f"/v1/jobs/{job_id}", {}, 401),
        (f"/v1/jobs/{job_id}", {"Authorization": "Bearer crk_nope_nope"}, 401),
        (f"/v1/jobs/{job_id}", {"Authorization": "Basic abc"}, 401),
        ("/v1/jobs/job-00000000-000000-0000000000", auth, 404),  # no such job
        ("/v1/jobs/not%20an%20id", auth, 404),
        (f"/v1/jobs/{job_id}?verbose=1", auth, 200),  # query strings are ignored
    ]
    for url, headers, status in cases:
        assert _same(clients, "GET", url, headers=headers).status_code == status, url
    # Not the fast path's routes: both go through FastAPI.
    for url in (f"/v1/jobs/{job_id}/", f"/v1/jobs/{job_id}/artifacts", "/v1/jobs/"):
        _same(clients, "GET", url, headers=auth, follow_redirects=False)
    _same(clients, "HEAD", f"/v1/jobs/{job_id}", headers=auth)
    _same(clients, "DELETE", f"/v1/jobs/{job_id}", headers=auth)


def test_get_job_shows_the_recorded_checkpoint(pair, clients, tokens: TokenStore) -> None:
    acme, _ = tokens.create("acme", ["jobs:read", "jobs:write"])
    auth = {"Authorization": f"Bearer {acme}"}
    job_id = clients[0].post("/v1/jobs", json=STEP, headers=auth).json()["job_id"]
    ref = CheckpointRef(uri=f"file:///ckpt/{job_id}/step-3", step=3)
    pair[0].scheduler.record_checkpoint(job_id, ref)
    r = _same(clients, "GET", f"/v1/jobs/{job_id}", headers=auth)
    assert r.json()["checkpoint"]["uri"] == ref.uri


def test_submit_answers_match(clients, tokens: TokenStore) -> None:
    acme, _ = tokens.create("acme", ["jobs:read", "jobs:write"])
    reader, _ = tokens.create("acme", ["jobs:read"])
    auth = {"Authorization": f"Bearer {acme}"}
    fast, _slow = clients

    # New jobs: the same answer up to the id.
    a, b = (c.post("/v1/jobs", json=STEP, headers=auth) for c in clients)
    assert a.status_code == b.status_code == 201
    assert _answer(a, a.json()["job_id"]) == _answer(b, b.json()["job_id"])

    # One Idempotency-Key across both servers: one job, the second answer says so.
    keyed = {**auth, "Idempotency-Key": "k-1"}
    first = fast.post("/v1/jobs", json=STEP, headers=keyed)
    assert first.status_code == 201
    again = _same(clients, "POST", "/v1/jobs", json=STEP, headers=keyed)
    assert again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    assert not again.json()["created"]

    refusals: list[tuple[dict[str, Any], int]] = [
        ({"content": b"{not json", "headers": auth}, 400),
        ({"content": b"[1, 2]", "headers": auth}, 400),
        ({"json": {**STEP, "tenant_id": "other"}, "headers": auth}, 403),
        ({"json": {"kind": "custom", "payload": {}}, "headers": auth}, 403),  # admin only
        ({"json": {"kind": "no_such_kind"}, "headers": auth}, 422),
        ({"json": STEP, "headers": {"Authorization": f"Bearer {reader}"}}, 403),
        ({"json": STEP, "headers": {}}, 401),
        ({"json": STEP, "headers": {**auth, "Idempotency-Key": "k" * 201}}, 422),
        ({"content": b" " * (LIMIT + 1), "headers": auth}, 413),
        # streamed without a Content-Length: refused as it arrives
        ({"stream": lambda: iter([b" " * 1024] * 5), "headers": auth}, 413),
    ]
    for kw, status in refusals:
        r = _same(clients, "POST", "/v1/jobs", **kw)
        assert r.status_code == status, (kw, r.text)
    listed = fast.get("/v1/jobs", headers=auth).json()["items"]
    assert len(listed) == 3  # the two new jobs and the keyed one; no refusal left a job


def test_a_bug_is_the_same_500_problem_and_the_server_goes_on(
    pair, clients, tokens: TokenStore, home
) -> None:
    """A job row that no longer decodes (written here straight into SQLite) is a bug
    on the server side: both paths answer 500 problem+json naming only its type."""
    acme, _ = tokens.create("acme", ["jobs:read", "jobs:write"])
    auth = {"Authorization": f"Bearer {acme}"}
    job_id = clients[0].post("/v1/jobs", json=STEP, headers=auth).json()["job_id"]
    with sqlite3.connect(home / "crucible.db") as db:
        db.execute("UPDATE jobs SET spec = '{broken' WHERE id = ?", (job_id,))
    r = _same(clients, "GET", f"/v1/jobs/{job_id}", headers=auth)
    assert r.status_code == 500
    assert r.json()["code"] == "crucible_error"
    assert "DecodeError" in r.json()["detail"]
    # uvicorn closes a connection whose request raised; a new one is served.
    with httpx.Client(base_url=pair[0].url, timeout=30) as again:
        assert again.post("/v1/jobs", json=STEP, headers=auth).status_code == 201


def test_fast_path_answers_are_counted_in_metrics(clients, tokens: TokenStore) -> None:
    acme, _ = tokens.create("acme", ["jobs:read", "jobs:write"])
    auth = {"Authorization": f"Bearer {acme}"}
    fast = clients[0]
    job_id = fast.post("/v1/jobs", json=STEP, headers=auth).json()["job_id"]
    fast.get(f"/v1/jobs/{job_id}", headers=auth)
    fast.get(f"/v1/jobs/{job_id}", headers=auth)
    fast.get(f"/v1/jobs/{job_id}")  # 401
    text = fast.get("/metrics", headers=auth).text
    assert 'crucible_http_requests_total{method="POST",status="201"} 1.0' in text
    assert 'crucible_http_requests_total{method="GET",status="200"} 2.0' in text
    assert 'crucible_http_requests_total{method="GET",status="401"} 1.0' in text


def test_a_client_gone_mid_body_leaves_no_job(pair, clients, tokens: TokenStore) -> None:
    acme, _ = tokens.create("acme", ["jobs:read", "jobs:write"])
    host, port = pair[0].url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {acme}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"kind": "experim'
        )
    auth = {"Authorization": f"Bearer {acme}"}
    assert clients[0].get("/v1/jobs", headers=auth).json()["items"] == []
    assert clients[0].post("/v1/jobs", json=STEP, headers=auth).status_code == 201


def test_a_training_runs_resume_point_follows_its_trainer_state(
    pair, clients, tokens: TokenStore
) -> None:
    """Without a checkpoint recorded in the queue, a training run's resume point is its
    run directory's trainer_state.json, read again when a save replaces it."""
    from crucible_core.ir.work import Job
    from crucible_core.records.artifacts import write_json
    from crucible_core.records.paths import run_dir
    from crucible_core.train.loop import LoopState, SavedCheckpoint
    from crucible_core.train.state import STATE_FILE

    acme, _ = tokens.create("acme", ["jobs:read"])
    auth = {"Authorization": f"Bearer {acme}"}
    job = pair[0].scheduler.enqueue(Job(kind="training_run", payload={}, tenant_id="acme"))
    assert _same(clients, "GET", f"/v1/jobs/{job.id}", headers=auth).json()["checkpoint"] is None
    for step in (2, 4):
        saved = SavedCheckpoint(ref=CheckpointRef(uri=f"file:///c/{step}", step=step), step=step)
        write_json(run_dir(job.id) / STATE_FILE, LoopState(step=step, checkpoints=[saved]))
        got = _same(clients, "GET", f"/v1/jobs/{job.id}", headers=auth).json()["checkpoint"]
        assert got["step"] == step

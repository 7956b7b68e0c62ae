"""The jobs endpoints over a real uvicorn on 127.0.0.1: submit, list, get, cancel, retry;
problem+json errors; tokens, scopes and tenants; body and rate limits."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from crucible_server.tokens import TokenStore

from crucible_core.errors import ERROR_TABLE

ALL = ["jobs:read", "jobs:write", "artifacts:read"]


def _custom(func: str, **args: Any) -> dict[str, Any]:
    return {"kind": "custom", "payload": {"target": f"server_test_jobs:{func}", "args": args}}


def _wait_status(
    c: httpx.Client, job_id: str, wanted: set[str], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()["job"]
        if job["status"] in wanted:
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} not {wanted} within {timeout} s")


def _problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == code
    assert body["status"] == status
    assert ERROR_TABLE[code][1] == status  # the one table decides the status
    return body


def test_submit_runs_and_get_shows_result(start_server, http, tokens: TokenStore) -> None:
    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens)
    c = http(srv, tok)
    r = c.post("/v1/jobs", json=_custom("ticks", n=3))
    assert r.status_code == 201, r.text
    sub = r.json()
    assert sub["created"] is True
    assert sub["stream_url"] == f"/v1/jobs/{sub['job_id']}/events"
    job = _wait_status(c, sub["job_id"], {"succeeded", "failed", "dead"})
    assert job["status"] == "succeeded"
    assert job["result"] == 3
    assert job["tenant_id"] == "acme"


def test_idempotency_key_returns_the_first_job(start_server, http, tokens: TokenStore) -> None:
    tok, _ = tokens.create("acme", ALL)
    srv = start_server(tokens=tokens, workers=0)
    c = http(srv, tok)
    body = {"kind": "experiment_step", "payload": {}}
    first = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    other = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-2"})
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["created"] is False
    assert other.json()["job_id"] != first.json()["job_id"]
    assert len(c.get("/v1/jobs").json()["items"]) == 2


def test_list_pages_with_a_cursor_and_filters(start_server, http, tokens: TokenStore) -> None:
    tok, _ = tokens.create("acme", ALL)
    srv = start_server(tokens=tokens, workers=0)
    c = http(srv, tok)
    ids = [
        c.post("/v1/jobs", json={"kind": "experiment_step", "payload": {}}).json()["job_id"]
        for _ in range(7)
    ]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert pages == 3
    assert c.get("/v1/jobs", params={"status": "queued"}).json()["items"]
    assert c.get("/v1/jobs", params={"kind": "training_run"}).json()["items"] == []
    _problem(c.get("/v1/jobs", params={"status": "bogus"}), 400, "config_error")
    _problem(c.get("/v1/jobs", params={"cursor": "nope"}), 400, "config_error")
    _problem(c.get("/v1/jobs", params={"limit": 0}), 422, "validation_error")


def test_cancel_a_running_job_then_retry_it(start_server, http, tokens: TokenStore) -> None:
    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens)
    c = http(srv, tok)
    job_id = c.post("/v1/jobs", json=_custom("until_cancelled")).json()["job_id"]
    _wait_status(c, job_id, {"running"})
    r = c.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    assert _wait_status(c, job_id, {"cancelled", "succeeded"})["status"] == "cancelled"
    r = c.post(f"/v1/jobs/{job_id}/retry")
    assert r.status_code == 200
    assert r.json()["status"] in ("queued", "running")
    _wait_status(c, job_id, {"running"})
    c.post(f"/v1/jobs/{job_id}/cancel")
    _wait_status(c, job_id, {"cancelled"})


def test_retry_of_a_job_that_did_not_fail_is_409(start_server, http, tokens: TokenStore) -> None:
    tok, _ = tokens.create("acme", ALL)
    srv = start_server(tokens=tokens, workers=0)
    c = http(srv, tok)
    job_id = c.post("/v1/jobs", json={"kind": "experiment_step", "payload": {}}).json()["job_id"]
    _problem(c.post(f"/v1/jobs/{job_id}/retry"), 409, "conflict")
    assert c.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"


def test_another_tenants_job_is_404_like_a_missing_one(
    start_server, http, tokens: TokenStore
) -> None:
    a, _ = tokens.create("acme", ["admin"])
    b, _ = tokens.create("globex", ["admin"])
    srv = start_server(tokens=tokens, workers=0)
    ca, cb = http(srv, a), http(srv, b)
    job_id = ca.post("/v1/jobs", json={"kind": "experiment_step", "payload": {}}).json()["job_id"]
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("POST", f"/v1/jobs/{job_id}/retry"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/artifacts"),
        ("GET", f"/v1/runs/{job_id}/lineage"),
    ]:
        theirs = _problem(cb.request(method, path), 404, "not_found")
        missing = _problem(cb.request(method, path.replace(job_id, "job-nope")), 404, "not_found")
        assert theirs["detail"].replace(job_id, "X") == missing["detail"].replace("job-nope", "X")
    assert cb.get("/v1/jobs").json()["items"] == []
    assert ca.get(f"/v1/jobs/{job_id}").json()["job"]["status"] == "queued"  # not cancelled by b
    # A body naming another tenant is refused, not silently filed elsewhere.
    _problem(
        cb.post("/v1/jobs", json={"kind": "experiment_step", "tenant_id": "acme"}), 403, "forbidden"
    )


def test_scopes_and_bad_tokens_are_refused(start_server, http, tokens: TokenStore) -> None:
    reader, _ = tokens.create("acme", ["jobs:read"])
    writer, _ = tokens.create("acme", ["jobs:write"])
    revoked, info = tokens.create("acme", ALL)
    tokens.revoke(info.id)
    srv = start_server(tokens=tokens, workers=0)
    body = {"kind": "experiment_step", "payload": {}}
    _problem(http(srv, reader).post("/v1/jobs", json=body), 403, "forbidden")
    assert http(srv, writer).post("/v1/jobs", json=body).status_code == 201
    _problem(http(srv, writer).get("/v1/jobs"), 403, "forbidden")
    # custom jobs run arbitrary Python in the worker: admin only
    _problem(http(srv, writer).post("/v1/jobs", json=_custom("ticks", n=1)), 403, "forbidden")
    r = http(srv).get("/v1/jobs")
    _problem(r, 401, "auth_error")
    assert r.headers["www-authenticate"] == "Bearer"
    _problem(http(srv, revoked).get("/v1/jobs"), 401, "auth_error")
    _problem(http(srv, reader + "x").get("/v1/jobs"), 401, "auth_error")
    _problem(http(srv, "crk_nope_nope").get("/v1/jobs"), 401, "auth_error")
    assert http(srv).get("/healthz").status_code == 200  # probes need no token


def test_bad_bodies_are_problems_naming_the_field(start_server, http, tokens: TokenStore) -> None:
    tok, _ = tokens.create("acme", ALL)
    srv = start_server(tokens=tokens, workers=0, max_body_bytes=4096)
    c = http(srv, tok)
    _problem(c.post("/v1/jobs", content=b"{not json"), 400, "config_error")
    _problem(c.post("/v1/jobs", content=b"[1]"), 400, "config_error")
    body = _problem(
        c.post("/v1/jobs", json={"kind": "custom", "priority": "urgent"}), 422, "validation_error"
    )
    assert "priority" in body["detail"]
    _problem(c.post("/v1/jobs", content=b"{" + b" " * 5000 + b"}"), 413, "too_large")
    # streamed without a Content-Length: counted as it arrives
    chunks = (b" " * 1024 for _ in range(8))
    _problem(c.post("/v1/jobs", content=chunks), 413, "too_large")
    _problem(c.get("/v1/nothing-here"), 404, "not_found")


def test_rate_limit_is_per_token(start_server, http, tokens: TokenStore) -> None:
    a, _ = tokens.create("acme", ALL)
    b, _ = tokens.create("acme", ALL)
    srv = start_server(tokens=tokens, workers=0, rate_per_s=1.0, rate_burst=3)
    ca = http(srv, a)
    codes = [ca.get("/v1/jobs").status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200]
    assert codes[3:] == [429, 429]
    r = ca.get("/v1/jobs")
    _problem(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    assert http(srv, b).get("/v1/jobs").status_code == 200  # another token is not throttled


def test_open_mode_is_tenant_default_with_every_scope(start_server, http) -> None:
    srv = start_server(tokens=None)
    c = http(srv)
    job_id = c.post("/v1/jobs", json=_custom("ticks", n=1)).json()["job_id"]
    assert _wait_status(c, job_id, {"succeeded"})["tenant_id"] == "default"


def test_health_ready_metrics(start_server, http) -> None:
    srv = start_server(tokens=None, workers=0)
    c = http(srv)
    assert c.get("/healthz").json() == {"status": "ok"}
    c.post("/v1/jobs", json={"kind": "experiment_step", "payload": {}})
    assert c.get("/readyz").json()["jobs"] == {"queued": 1}
    text = c.get("/metrics").text
    assert 'crucible_jobs{status="queued"} 1.0' in text
    assert 'crucible_http_requests_total{method="POST",status="201"} 1.0' in text

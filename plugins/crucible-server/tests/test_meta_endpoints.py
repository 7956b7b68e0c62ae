"""Plugins, backends, plan and lineage endpoints over a real server."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import msgspec
from crucible_server.client import Client
from crucible_server.tokens import TokenStore

from crucible_core.ir import TrainingJob, decode_file

ROOT = Path(__file__).resolve().parents[3]


def _dates(**learning: Any) -> dict[str, Any]:
    raw: dict[str, Any] = msgspec.to_builtins(
        decode_file(ROOT / "examples" / "dates-local.toml", TrainingJob)
    )
    raw["dataset_spec"]["uri"] = "examples/data/dates.jsonl"
    raw["learning_config"].update(learning)
    return raw


def test_plugins_and_backends_are_listed(start_server, http) -> None:
    srv = start_server(tokens=None, workers=0)
    c = http(srv)
    plugins = {p["name"]: p for p in c.get("/v1/plugins").json()}
    assert plugins["server"]["status"] == "ok"
    assert "local" in {b["name"] for b in c.get("/v1/backends").json()}


def test_plan_without_running_and_refused_submission(start_server, http) -> None:
    srv = start_server(tokens=None, workers=0)
    c = http(srv)
    plan = c.post("/v1/plan", json=_dates(max_steps=5))
    assert plan.status_code == 200, plan.text
    assert plan.json()["ok"] is True
    assert plan.json()["backend"] == "local"
    bad = _dates(max_steps=5)
    bad["backend"] = "no-such-backend"
    refused = c.post("/v1/plan", json=bad)
    assert refused.status_code == 200
    assert refused.json()["ok"] is False
    sub = c.post("/v1/jobs", json=bad)
    assert sub.status_code == 400, sub.text
    assert sub.json()["code"] == "config_error"
    assert sub.json()["problems"]
    assert c.get("/v1/jobs").json()["items"] == []  # nothing enqueued
    assert c.post("/v1/plan", json={"nonsense": 1}).status_code in (400, 422)


def test_lineage_of_a_finished_training_run(start_server, tokens: TokenStore) -> None:
    tok, _ = tokens.create("acme", ["jobs:read", "jobs:write"])
    srv = start_server(tokens=tokens, workers=1)
    with Client(srv.url, token=tok, timeout=120) as c:
        job = _dates(max_steps=2)
        job["validation_spec"] = {"every_n_steps": 1000, "metrics": ["loss"]}
        job_id = c.submit(job).job_id
        assert list(c.events(job_id))[-1].data["status"] == "succeeded"
        deadline = time.monotonic() + 30
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = c._http.get(f"/v1/runs/{job_id}/lineage").json()
            if body.get("descendants"):
                break
            time.sleep(0.1)
        assert body["descendants"]["id"] == job_id
        assert body["ancestors"]["children"]  # it consumed a dataset / model


class _CloseRecorder(logging.Handler):
    """A handler the host program made (in logging's list, attached nowhere, like absl's)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        super().close()


def test_an_embedded_server_leaves_the_host_programs_logging_alone(start_server) -> None:
    """uvicorn's default logging set-up (dictConfig) shuts down every handler in the
    process, which closed the stream of a library's handler (absl's, imported by
    rouge-score) that was pytest's capture file. Only `crucible serve` configures it."""
    handler = _CloseRecorder()
    root = logging.getLogger()
    before = root.handlers[:]
    srv = start_server()
    srv.stop()
    assert not handler.closed
    assert root.handlers == before

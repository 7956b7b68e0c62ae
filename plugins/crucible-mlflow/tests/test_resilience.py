"""A tracking server that hangs never slows or fails the run (issue 23, point 4).

The hanging part is real: an HTTP server on 127.0.0.1 that reads every request and
never answers, reached by mlflow's own REST client (``CRUCIBLE_MLFLOW_TRACKING_URI``).
The run is a real crucible-local training run of the shortened README main job.
"""

from __future__ import annotations

import logging
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crucible_mlflow import sink as sink_module

from crucible_core import hookimpl
from crucible_core.plugins import reset_host
from crucible_core.records.events import Event, read_telemetry
from crucible_core.train.run import run_training


@pytest.fixture
def seen(host_with: Any) -> Iterator[list[Event]]:
    """A host where another plugin records every event it is given."""
    events: list[Event] = []

    def on_event(event: Event) -> None:
        events.append(event)

    host = host_with((types.SimpleNamespace(on_event=hookimpl(on_event)), "recorder"))
    reset_host(host)
    yield events
    reset_host(None)


def test_a_hanging_tracking_server_neither_slows_nor_fails_the_run(
    seen: list[Event],
    hanging_server: Any,
    short_job: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = short_job(tmp_path, steps=8)
    # Baseline: the same run with the sink off.
    monkeypatch.setenv("CRUCIBLE_MLFLOW_TRACKING_URI", "none")
    began = time.monotonic()
    run_training(job, job_id="untracked")
    baseline = time.monotonic() - began
    sink_module.reset(1)

    monkeypatch.setenv("CRUCIBLE_MLFLOW_TRACKING_URI", hanging_server.url)
    monkeypatch.setenv("CRUCIBLE_MLFLOW_QUEUE", "4")
    monkeypatch.setenv("CRUCIBLE_MLFLOW_FLUSH_S", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")  # mlflow's own limit stays far
    # Once the test ends the server goes away: the abandoned worker then fails at once
    # instead of retrying against a port another test may reuse.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    seen.clear()
    with caplog.at_level(logging.WARNING, logger="crucible_mlflow"):
        began = time.monotonic()
        outcome = run_training(job, job_id="hanging")
        took = time.monotonic() - began
        sink = sink_module.current_sink()
        assert sink is not None
        closing = time.monotonic()
        sink_module.reset(None)  # what the process does at exit, bounded by FLUSH_S
        closed_in = time.monotonic() - closing
    assert outcome.steps == 8
    assert hanging_server.requests >= 1  # the sink did reach the server, which hangs
    # The run did not wait for the server (it holds every request for 60 s): at most
    # the baseline plus noise on a shared machine.
    assert took < baseline * 2 + 5.0, (took, baseline)
    assert closed_in < 3.0  # FLUSH_S = 1, not mlflow's 120 s timeout and retries
    assert sink.dropped >= 1
    assert any("events are being dropped" in r.getMessage() for r in caplog.records)
    # Another plugin still saw every event of the run: the bus dropped no subscriber.
    telemetry = [e for e in read_telemetry("hanging") if e.kind != "sink.dropped"]
    mine = [e for e in seen if e.job_id == "hanging"]
    assert [e.kind for e in mine] == [e.kind for e in telemetry]
    assert not any(e.kind == "bus.subscriber_dropped" for e in read_telemetry("hanging"))
    # The source of truth records the gap: at the first drop, and the total at close.
    warnings = [e for e in read_telemetry("hanging") if e.kind == "sink.dropped"]
    assert len(warnings) == 2
    assert all(w.data["sink"] == "mlflow" and w.data["level"] == "warning" for w in warnings)
    assert warnings[-1].data["dropped"] == sink.drops.by_job["hanging"]


def test_a_bad_setting_turns_the_sink_off_with_one_warning(
    seen: list[Event],
    short_job: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("CRUCIBLE_MLFLOW_QUEUE", "many")
    job = short_job(tmp_path, steps=2)
    with caplog.at_level(logging.WARNING, logger="crucible_mlflow"):
        outcome = run_training(job, job_id="badly-set")
    assert outcome.steps == 2
    assert sink_module.current_sink() is None
    [record] = [r for r in caplog.records if "crucible-mlflow is off" in r.getMessage()]
    assert "CRUCIBLE_MLFLOW_QUEUE" in record.getMessage()

"""The sink never slows a run: bounded queue, drop counter, warning event; real transports.

The slow transport in the first test is a real callable that waits on an
Event (it stands for a lineage server that does not answer); the HTTP tests
use real servers on 127.0.0.1 (conftest.Endpoint), one of which hangs.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from crucible_openlineage.config import SinkConfig, make_transport
from crucible_openlineage.sink import LineageSink

from crucible_core.errors import ConfigError
from crucible_core.records.events import Event, read_telemetry


def _ev(kind: str, job: str, ts: float, **data: Any) -> Event:
    return Event(kind=kind, job_id=job, ts=ts, data=data)


def _run_events(job: str, status: str = "succeeded") -> list[Event]:
    return [
        _ev("run.start", job, 1.0, name=f"exp {job}", job_kind="experiment_step"),
        _ev("stage.start", job, 1.5, stage="a"),
        _ev("run.end", job, 2.0, status=status, artifacts=[]),
    ]


def test_a_stuck_transport_fills_the_queue_then_events_are_dropped_and_counted(
    crucible_home: Path,
) -> None:
    gate = threading.Event()
    sent: list[Any] = []

    def stuck(event: Any) -> None:
        gate.wait(10)
        sent.append(event)

    sink = LineageSink(stuck, queue_size=2)
    began = time.monotonic()
    for i in range(5):
        for e in _run_events(f"job-{i}"):
            sink.observe(e)
    assert time.monotonic() - began < 2.0  # observe never waited for the transport
    # 10 transitions: the sender holds one, the queue two; the rest are dropped.
    assert sink.stats.dropped >= 7
    warnings = [e for e in read_telemetry("job-4") if e.kind == "openlineage.dropped"]
    assert len(warnings) == 1  # one warning per run, however many of its events are dropped
    assert warnings[0].data["level"] == "warning"
    assert "dropped" in warnings[0].data["message"]
    gate.set()
    assert sink.close(5.0)
    assert sink.stats.sent == len(sent) == 10 - sink.stats.dropped


def test_a_transport_that_raises_is_counted_and_the_sink_goes_on() -> None:
    calls: list[str] = []

    def flaky(event: Any) -> None:
        calls.append(event.eventType.value)
        if len(calls) == 1:
            raise ConnectionError("refused")

    sink = LineageSink(flaky)
    for e in _run_events("a") + _run_events("b"):
        sink.observe(e)
    assert sink.close(5.0)
    assert calls == ["START", "COMPLETE", "START", "COMPLETE"]
    assert (sink.stats.errors, sink.stats.sent) == (1, 3)


def test_closing_aborts_runs_still_open() -> None:
    got: list[Any] = []
    sink = LineageSink(got.append)
    sink.observe(_ev("run.start", "open", 1.0, name="x"))
    sink.close(5.0)
    assert [e.eventType.value for e in got] == ["START", "ABORT"]
    sink.observe(_ev("run.start", "late", 3.0, name="x"))  # after close: ignored
    assert len(got) == 2


def test_http_transport_posts_valid_events_to_a_local_server(endpoint: Any, validate: Any) -> None:
    env = {
        "CRUCIBLE_OPENLINEAGE_TRANSPORT": "http",
        "CRUCIBLE_OPENLINEAGE_URL": endpoint.url,
        "CRUCIBLE_OPENLINEAGE_NAMESPACE": "lab",
    }
    config = SinkConfig.from_env(env)
    send = make_transport(config)
    assert send is not None
    sink = LineageSink(send, namespace=config.namespace)
    for e in _run_events("h", status="cancelled"):
        sink.observe(e)
    assert sink.close(10.0)
    assert [e["eventType"] for e in endpoint.json()] == ["START", "ABORT"]
    assert set(endpoint.paths) == {"/api/v1/lineage"}
    for e in endpoint.json():
        validate(e)
        assert e["job"]["namespace"] == "lab"


def test_a_hanging_server_costs_the_sink_bounded_time(hanging_endpoint: Any) -> None:
    config = SinkConfig.from_env(
        {
            "CRUCIBLE_OPENLINEAGE_TRANSPORT": "http",
            "CRUCIBLE_OPENLINEAGE_URL": hanging_endpoint.url,
            "CRUCIBLE_OPENLINEAGE_TIMEOUT_S": "30",
        }
    )
    send = make_transport(config)
    assert send is not None
    sink = LineageSink(send, queue_size=1)
    began = time.monotonic()
    for e in _run_events("slow") + _run_events("slower"):
        sink.observe(e)
    assert sink.close(1.0) is False  # not everything could be sent in the second allowed
    assert time.monotonic() - began < 5.0
    assert sink.stats.dropped >= 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CRUCIBLE_OPENLINEAGE_TRANSPORT": "kafka"}, "CRUCIBLE_OPENLINEAGE_TRANSPORT"),
        ({"CRUCIBLE_OPENLINEAGE_TRANSPORT": "http"}, "CRUCIBLE_OPENLINEAGE_URL"),
        ({"CRUCIBLE_OPENLINEAGE_URL": "127.0.0.1:5000"}, "CRUCIBLE_OPENLINEAGE_URL"),
        ({"CRUCIBLE_OPENLINEAGE_QUEUE": "many"}, "CRUCIBLE_OPENLINEAGE_QUEUE"),
        ({"CRUCIBLE_OPENLINEAGE_TIMEOUT_S": "0"}, "CRUCIBLE_OPENLINEAGE_TIMEOUT_S"),
    ],
)
def test_a_bad_setting_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        SinkConfig.from_env(env)
    assert info.value.hint


def test_defaults_and_the_none_transport(crucible_home: Path) -> None:
    config = SinkConfig.from_env({})
    assert (config.transport, config.namespace, config.queue_size) == ("file", "crucible", 1000)
    assert config.file_path() == crucible_home / "openlineage.jsonl"
    assert make_transport(SinkConfig.from_env({"CRUCIBLE_OPENLINEAGE_TRANSPORT": "none"})) is None


def test_an_event_that_cannot_be_built_is_counted_not_raised() -> None:
    got: list[Any] = []

    def build(t: Any) -> Any:
        if t.job_id == "bad":
            raise TypeError("unexpected payload")
        return t.state

    sink = LineageSink(got.append, build=build)
    for e in _run_events("bad") + _run_events("good"):
        sink.observe(e)
    assert sink.close(5.0)
    assert got == ["START", "COMPLETE"]
    assert sink.stats.errors == 2

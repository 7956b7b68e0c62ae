"""A sink that hangs never slows or fails the run (issue 23, point 4).

The hanging parts are real: an exporter class whose ``export`` blocks until
released (behind the SDK's synchronous ``SimpleSpanProcessor``, so it holds
the sink's worker thread), and an HTTP endpoint on 127.0.0.1 that accepts
OTLP requests and never answers, reached by the SDK's real OTLP exporter.
"""

from __future__ import annotations

import logging
import socketserver
import threading
import time
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import crucible_otel.plugin
import pytest
from crucible_otel import sink as sink_module
from crucible_otel.config import sink_from_env
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from crucible_core import hookimpl
from crucible_core.plugins import PluginHost, reset_host
from crucible_core.records.events import Event, read_telemetry
from crucible_core.train.run import run_training


class HangingExporter(SpanExporter):
    """Blocks in ``export`` until :attr:`release` is set (a collector that stopped answering)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        self.release.wait()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


@pytest.fixture
def recorded(crucible_home: Path) -> Iterator[tuple[PluginHost, list[Event]]]:
    """Toy backend, a recording plugin, then crucible-otel (called first: pluggy is LIFO)."""
    from tests.toy_backend import toy_plugin

    seen: list[Event] = []

    def on_event(event: Event) -> None:
        seen.append(event)

    h = PluginHost(autoload=False)
    h.add_plugin(toy_plugin(), name="toy")
    h.add_plugin(types.SimpleNamespace(on_event=hookimpl(on_event)), name="recorder")
    h.add_plugin(crucible_otel.plugin, name="otel")
    reset_host(h)
    yield h, seen
    reset_host(None)


def _job() -> Any:
    from tests.test_training_workflow import make_job

    return make_job()


def test_a_hanging_exporter_drops_events_instead_of_stalling_run_or_other_plugins(
    recorded: tuple[PluginHost, list[Event]], new_otel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    host, seen = recorded
    hanging = HangingExporter()
    otel = new_otel(hanging, maxsize=4)
    previous = sink_module.install(otel.sink)
    try:
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="crucible_otel"):
            outcome = run_training(_job(), job_id="hung", host=host)
        elapsed = time.monotonic() - start
        telemetry = list(read_telemetry("hung"))
        # The run's own record says the copy has a gap (written beside the run's bus).
        [warning] = [e for e in telemetry if e.kind == "sink.dropped"]
        assert warning.data["level"] == "warning"
        assert warning.data["sink"] == "otel"
        events = [e for e in telemetry if e.kind != "sink.dropped"]
        assert outcome.steps == 12
        assert elapsed < 30
        assert hanging.calls == 1  # the first ended span is still being exported
        # Behind the event in export (1), the sink's queue (4) filled: the rest was
        # dropped and counted...
        assert otel.sink.dropped == len(events) - otel.sink.handled - 1 - 4 > 0
        assert "events are being dropped" in caplog.text
        otel.reader.collect()
        [(_, dropped)] = otel.points("crucible.otel.dropped_events")
        assert dropped.value == otel.sink.dropped
        # ...while the other plugin got every event, and the bus dropped no subscriber.
        deadline = time.monotonic() + 10
        while len(seen) < len(events) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e.kind for e in seen] == [e.kind for e in events]
        assert not [e for e in events if e.kind == "bus.subscriber_dropped"]
        # Closing while the export still hangs is bounded too, and says it did not finish.
        t0 = time.monotonic()
        assert otel.sink.close(0.5) is False
        assert time.monotonic() - t0 < 3
        summary = [e for e in read_telemetry("hung") if e.kind == "sink.dropped"][-1]
        assert summary.data["dropped"] == otel.sink.dropped
    finally:
        hanging.release.set()
        sink_module.install(previous)


class _Silent(socketserver.BaseRequestHandler):
    """Reads the request, then never answers (until the test ends)."""

    def handle(self) -> None:
        server: Any = self.server
        data = self.request.recv(65536)
        server.requests.append(data.split(b"\r\n", 1)[0])
        server.stop.wait(60)


@pytest.fixture
def silent_endpoint() -> Iterator[Any]:
    server: Any = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Silent)
    server.daemon_threads = True
    server.requests = []
    server.stop = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


def test_an_otlp_endpoint_that_never_answers_does_not_hold_up_the_run_or_its_exit(
    recorded: tuple[PluginHost, list[Event]],
    silent_endpoint: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host, _ = recorded
    port = silent_endpoint.server_address[1]
    monkeypatch.setenv("CRUCIBLE_OTEL_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    sink = sink_from_env()
    assert sink is not None
    previous = sink_module.install(sink)
    try:
        start = time.monotonic()
        outcome = run_training(_job(), job_id="silent", host=host)
        assert outcome.steps == 12
        assert time.monotonic() - start < 30
        deadline = time.monotonic() + 10
        while not silent_endpoint.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert silent_endpoint.requests[0].startswith(b"POST /v1/traces")
        t0 = time.monotonic()
        assert sink.close(1.0) is False  # the export is still waiting for an answer
        assert time.monotonic() - t0 < 3
        # Given up on, the exporters are stopped: no retries (with random jitter, for up to
        # OTEL_EXPORTER_OTLP_TIMEOUT) go on behind the closed sink.
        assert len(sink.exporters) == 2
        assert all(e._shutdown for e in sink.exporters)  # pyright: ignore[reportPrivateUsage]
    finally:
        sink_module.install(previous)

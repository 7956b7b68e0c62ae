"""Fixtures for crucible-otel: a real SDK pipeline ending in the SDK's in-memory exporters.

The spans and metric points checked are the ones the OpenTelemetry SDK itself
produced (``InMemorySpanExporter`` behind a ``SimpleSpanProcessor``,
``InMemoryMetricReader``), from real events of the event bus. The toy training
backend (``tests.toy_backend``, importable when pytest runs from the
repository root) is a real numpy model that learns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from crucible_otel import sink as sink_module
from crucible_otel.sink import OtelSink
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from crucible_core.plugins import PluginHost, reset_host


@dataclass
class Otel:
    sink: OtelSink
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        assert self.sink.flush(10)
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, point) of every data point of metric ``name`` collected now."""
        data = self.reader.get_metrics_data()
        out: list[tuple[dict[str, Any], Any]] = []
        for rm in data.resource_metrics if data is not None else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        out.extend((dict(p.attributes or {}), p) for p in m.data.data_points)
        return out


def make_otel(exporter: SpanExporter | None = None, *, maxsize: int = 10_000) -> Otel:
    spans = InMemorySpanExporter()
    tp = TracerProvider(shutdown_on_exit=False)
    tp.add_span_processor(SimpleSpanProcessor(spans))
    if exporter is not None:
        tp.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    return Otel(OtelSink(tracer_provider=tp, meter_provider=mp, maxsize=maxsize), spans, reader)


@pytest.fixture
def otel(crucible_home: Path) -> Iterator[Otel]:
    """An in-memory sink installed as the process-wide one (restored afterwards)."""
    o = make_otel()
    previous = sink_module.install(o.sink)
    yield o
    o.sink.close(10)
    sink_module.install(previous)


@pytest.fixture
def crucible_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "crucible-home"
    monkeypatch.setenv("CRUCIBLE_HOME", str(home))
    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", str(tmp_path / "cache"))
    return home


@pytest.fixture
def host(crucible_home: Path) -> Iterator[PluginHost]:
    """An isolated host with the toy backend and this plugin's hook, installed process-wide."""
    import crucible_otel.plugin

    from tests.toy_backend import toy_plugin

    h = PluginHost(autoload=False)
    h.add_plugin(toy_plugin(), name="toy")
    h.add_plugin(crucible_otel.plugin, name="otel")
    reset_host(h)
    yield h
    reset_host(None)


@pytest.fixture
def new_otel() -> Any:
    """``new_otel(exporter=None, maxsize=...)``: an in-memory sink, not installed."""
    return make_otel

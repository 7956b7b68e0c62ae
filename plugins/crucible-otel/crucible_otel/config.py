"""The sink the environment asks for.

``CRUCIBLE_OTEL_EXPORTER``: ``otlp`` (OTLP over HTTP/protobuf), ``console``
(spans and metrics as JSON on stderr) or ``none``. Unset, it is ``otlp`` when
an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``..._METRICS_ENDPOINT``) and
``none`` otherwise, so installing the plugin sends nothing anywhere until
asked. ``OTEL_SDK_DISABLED=true`` turns it off whatever else is set.

``CRUCIBLE_OTEL_QUEUE_SIZE`` (default 10000) bounds the events waiting for
export; ``CRUCIBLE_OTEL_SHUTDOWN_TIMEOUT`` (seconds, default 5) bounds how
long a finishing process waits for the last export.

Everything else is the SDK's own standard variables, honoured as usual:
``OTEL_SERVICE_NAME`` (default here: ``crucible``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``_HEADERS`` / ``_TIMEOUT`` (and their
per-signal forms), ``OTEL_BSP_*`` (span batching) and
``OTEL_METRIC_EXPORT_INTERVAL``.

A value that is not understood is logged (logger ``crucible_otel``) and export
stays off: a telemetry copy must never stop a run.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from crucible_otel.sink import OtelSink

__all__ = ["EXPORTERS", "exporter_choice", "shutdown_timeout", "sink_from_env"]

EXPORTERS: Final = ("otlp", "console", "none")
_ENDPOINTS: Final = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
log = logging.getLogger("crucible_otel")


def exporter_choice() -> str | None:
    """``otlp``, ``console``, ``none``, or None if ``CRUCIBLE_OTEL_EXPORTER`` is not one of them."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    raw = os.environ.get("CRUCIBLE_OTEL_EXPORTER", "").strip().lower()
    if not raw:
        return "otlp" if any(os.environ.get(v) for v in _ENDPOINTS) else "none"
    return raw if raw in EXPORTERS else None


def _number(name: str, default: float, *, minimum: float) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        log.warning(
            "crucible-otel: %s=%r is not a number >= %g; OpenTelemetry export is off",
            name,
            raw,
            minimum,
        )
        return None
    return value


def shutdown_timeout() -> float:
    """Seconds a finishing process waits for the last export (``..._SHUTDOWN_TIMEOUT``)."""
    return _number("CRUCIBLE_OTEL_SHUTDOWN_TIMEOUT", 5.0, minimum=0.0) or 0.0


def sink_from_env() -> OtelSink | None:
    """The sink the environment configures, or None (export off, or a value not understood)."""
    choice = exporter_choice()
    if choice is None:
        log.warning(
            "crucible-otel: CRUCIBLE_OTEL_EXPORTER=%r is not one of %s; OpenTelemetry export "
            "is off",
            os.environ.get("CRUCIBLE_OTEL_EXPORTER"),
            ", ".join(EXPORTERS),
        )
        return None
    if choice == "none":
        return None
    size = _number("CRUCIBLE_OTEL_QUEUE_SIZE", 10_000, minimum=1)
    if size is None:
        return None

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    from crucible_otel.sink import OtelSink

    span_exporter: SpanExporter
    metric_exporter: MetricExporter
    if choice == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter, metric_exporter = OTLPSpanExporter(), OTLPMetricExporter()
    else:
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        span_exporter = ConsoleSpanExporter(out=sys.stderr)
        metric_exporter = ConsoleMetricExporter(out=sys.stderr)

    resource = Resource.create(default_attributes())
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[PeriodicExportingMetricReader(metric_exporter)],
        shutdown_on_exit=False,
    )
    return OtelSink(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        maxsize=int(size),
        exporters=(span_exporter, metric_exporter),
    )


def default_attributes() -> dict[str, str]:
    """``service.name = crucible`` unless the standard variables name the service."""
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    return {} if named else {"service.name": "crucible"}

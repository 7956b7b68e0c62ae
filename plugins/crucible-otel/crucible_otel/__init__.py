"""crucible-otel: Crucible runs as OpenTelemetry traces and metrics.

Installed, it observes every runtime event (``on_event``) and, once an exporter
is configured (``CRUCIBLE_OTEL_EXPORTER`` or the standard ``OTEL_EXPORTER_OTLP_*``
variables), sends one trace per run, with a span per stage and per checkpoint,
and the training metrics (loss, step time, tokens/s) through the OTel metrics
API. JSONL telemetry stays the source of truth; this is a copy that may drop
events rather than slow the run.

Library use (an in-memory exporter, as the tests do)::

    from crucible_otel.sink import OtelSink, install
    install(OtelSink(tracer_provider=tp, meter_provider=mp))

This module imports nothing from opentelemetry; :mod:`crucible_otel.sink` does
so only when a sink is built.
"""

from __future__ import annotations

__all__: list[str] = []

"""The OpenTelemetry sink: a bounded queue and one worker thread between the bus and the SDK.

Why its own queue (the core's :class:`~crucible_core.records.sinkqueue.SinkQueue`,
shared by every sink plugin): ``on_event`` runs on the event bus's plugin delivery
thread, shared by every plugin. An exporter that blocks (a collector that
is down or slow, a synchronous span processor) would hold that thread, delay
the other plugins and, after 10 000 events, get every plugin dropped by the
bus. So :meth:`OtelSink.offer` only puts the event on a bounded queue
(``put_nowait``) and returns; when the queue is full the event is dropped,
counted (:attr:`OtelSink.dropped`, metric ``crucible.otel.dropped_events``),
the first drop is logged as a warning (logger ``crucible_otel``) and a
``sink.dropped`` warning event goes into the run's telemetry.jsonl. The
run and the other plugins never wait for OpenTelemetry, and JSONL telemetry
stays complete.

:meth:`OtelSink.close` waits at most ``timeout`` seconds in total for the
queue to drain and the providers to flush; export that hangs past it is
abandoned (daemon threads), so a dead collector cannot keep a finished
process alive.

The process-wide sink is built from the environment on the first event
(:func:`deliver`; see :mod:`crucible_otel.config`) and closed at exit;
:func:`install` replaces it (tests, embedding).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from crucible_core.records.sinkqueue import DropLedger, SinkQueue, bounded_call
from crucible_core.records.sinkslot import SinkSlot

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    from crucible_core.records.events import Event

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "OtelSink",
    "current_sink",
    "deliver",
    "install",
    "reset",
]

DEFAULT_QUEUE_SIZE: Final = 10_000
log = logging.getLogger("crucible_otel")


class OtelSink:
    """Events in (never blocking), spans and metric points out (on a worker thread).

    ``tracer_provider`` and ``meter_provider`` are SDK providers (the sink
    flushes and shuts them down on :meth:`close`); ``maxsize`` bounds the
    events waiting for the worker. ``exporters`` (those behind the providers)
    are shut down directly when :meth:`close` runs out of time, which stops
    their retries: an endpoint that is down must not be retried for the
    exporter's whole timeout after the sink gave up on it.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        exporters: Sequence[Any] = (),
    ) -> None:
        from crucible_otel.translate import Translator

        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.exporters = tuple(exporters)
        self.maxsize = maxsize
        self.translator = Translator(tracer_provider, meter_provider)
        #: Events dropped, by job (the total is :attr:`dropped`).
        self.drops = DropLedger("otel", maxsize)
        self.queue: SinkQueue[Event] = SinkQueue(
            self.translator.handle, name="crucible-otel", maxsize=maxsize, on_drop=self._drop
        )

    @property
    def dropped(self) -> int:
        """Events dropped because the queue was full (or the sink closed)."""
        return self.queue.dropped

    @property
    def errors(self) -> int:
        """Events whose translation raised (counted, then ignored)."""
        return self.queue.errors

    @property
    def handled(self) -> int:
        """Events turned into spans and metric points."""
        return self.queue.handled

    # -- producer side (the bus's delivery thread) -----------------------------

    def offer(self, event: Event) -> bool:
        """Queue ``event`` for export; False (and counted) if the queue is full or closed."""
        return self.queue.offer(event)

    def _drop(self, event: Event) -> None:
        first = self.queue.dropped == 1
        first_of_job = self.drops.count(event.job_id)
        self.translator.dropped.add(1, {"crucible.job_id": event.job_id})
        why = "closed" if self.queue.closed else "not keeping up"
        if first:
            log.warning(
                "crucible-otel: the OpenTelemetry exporter is %s; events are being dropped "
                "(queue of %d full) and the run goes on. JSONL telemetry is complete; "
                "the count is the metric crucible.otel.dropped_events.",
                why,
                self.maxsize,
            )
        if first_of_job:
            self.drops.warn(
                event.job_id,
                1,
                f"the OpenTelemetry sink is {why}: it drops events of this run "
                f"from {event.kind!r} on (queue of {self.maxsize} full); this file stays complete",
            )

    # -- flushing -------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Export what is queued so far; True if it all went within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        if not self.queue.flush(timeout):
            return False
        return self._flush_providers(deadline)

    def _flush_providers(self, deadline: float) -> bool:
        def flush() -> None:
            ms = int(max(deadline - time.monotonic(), 0.0) * 1000)
            self.tracer_provider.force_flush(ms)
            self.meter_provider.force_flush(ms)

        return bounded_call(flush, deadline - time.monotonic(), "crucible-otel-flush")

    def close(self, timeout: float = 5.0) -> bool:
        """End open runs' spans, flush and shut the providers down, all within ``timeout`` s.

        Returns True if everything was exported in time. Idempotent.
        """
        if self.queue.closed:
            return True
        deadline = time.monotonic() + timeout
        ok = self.queue.close(timeout, final=self.translator.finish)

        def shutdown() -> None:
            self.tracer_provider.shutdown()
            self.meter_provider.shutdown(
                timeout_millis=max(deadline - time.monotonic(), 0.0) * 1000
            )

        done = bounded_call(shutdown, deadline - time.monotonic(), "crucible-otel-shutdown")
        if not done:
            for exporter in self.exporters:  # the providers' shutdown is stuck exporting
                bounded_call(exporter.shutdown, 0.5, "crucible-otel-stop-exporter")
        if self.dropped:
            log.warning("crucible-otel: %d events were dropped in all", self.dropped)
            self.drops.report(lambda n: f"the OpenTelemetry sink dropped {n} events")
        return ok and done


# -- the process-wide sink ------------------------------------------------------


def _build() -> OtelSink | None:
    from crucible_otel.config import sink_from_env

    return sink_from_env()


def _close(sink: OtelSink, timeout: float | None) -> None:
    from crucible_otel.config import shutdown_timeout

    sink.close(shutdown_timeout() if timeout is None else timeout)


_slot: SinkSlot[OtelSink] = SinkSlot(_build, _close, OtelSink.offer)


#: The process-wide sink (None when off or nothing was delivered yet).
current_sink = _slot.current
#: ``install(sink)``: make ``sink`` (None: off) the process-wide sink; returns the one it
#: replaces, not closed (the caller owns it).
install = _slot.install
#: ``reset(timeout=None)``: close the process-wide sink within ``timeout`` (None:
#: ``CRUCIBLE_OTEL_SHUTDOWN_TIMEOUT``) and forget it, so the next event builds a new one from the
#: environment; returns the closed sink.
reset = _slot.reset
#: ``deliver(event)``: hand ``event`` to the process-wide sink, building it from the
#: environment first (what the ``on_event`` hook calls).
deliver = _slot.deliver

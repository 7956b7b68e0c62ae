"""The sink: crucible events in, OpenLineage events out, never in the run's way.

:meth:`LineageSink.observe` runs on the event bus's plugin delivery thread.
It feeds the :class:`~crucible_openlineage.states.RunTracker`, builds the
OpenLineage events of the transitions and offers them to the sink's own
bounded queue without waiting (the core's
:class:`~crucible_core.records.sinkqueue.SinkQueue`, shared by every sink
plugin); one sender thread takes them off and calls the transport. So a
lineage server that is down or hangs delays nothing but
that thread: when the queue is full the event is dropped and counted
(``stats.dropped``), and the first drop of each run writes a warning event
``openlineage.dropped`` (``level: warning``) into the run's telemetry.jsonl,
the source of truth. A transport that raises is counted (``stats.errors``)
and logged once per kind of error.

At process exit (``atexit``) the open runs are ended with ABORT and the
sender gets at most ``flush_s`` seconds to send what is queued; the process
never waits longer than that for a lineage server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crucible_core.records.sinkqueue import SinkQueue, record_warning
from crucible_openlineage.states import RunTracker, Transition

__all__ = ["LineageSink", "SinkStats"]

log = logging.getLogger("crucible.openlineage")


@dataclass
class SinkStats:
    """Counters of a sink: events queued, sent, dropped (queue full), failed to build or send."""

    queued: int = 0
    sent: int = 0
    dropped: int = 0
    errors: int = 0


def _telemetry_warning(job_id: str, data: dict[str, Any]) -> None:
    """Append an ``openlineage.dropped`` warning to the run's telemetry.jsonl."""
    record_warning("openlineage.dropped", job_id, **data)


class LineageSink:
    """Turns crucible events into OpenLineage events and sends them on its own thread.

    ``send`` sends one built event (a transport's ``emit``); ``build`` makes
    the event of a transition (default: :func:`crucible_openlineage.build.build_event`);
    ``warn(job_id, data)`` records a drop (default: a telemetry warning event).
    """

    def __init__(
        self,
        send: Callable[[Any], object],
        *,
        namespace: str = "crucible",
        queue_size: int = 1000,
        build: Callable[[Transition], Any] | None = None,
        warn: Callable[[str, dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.namespace = namespace
        self._send = send
        self._build = build or self._default_build
        self._warn = warn or _telemetry_warning
        self._clock = clock
        self._tracker = RunTracker()
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._queued = 0
        self._build_errors = 0
        self._closed = False
        self._queue: SinkQueue[tuple[Transition, Any]] = SinkQueue(
            self._deliver, name="crucible-openlineage", maxsize=queue_size, on_drop=self._dropped
        )

    @property
    def stats(self) -> SinkStats:
        """The counters now (a snapshot)."""
        return SinkStats(
            queued=self._queued,
            sent=self._queue.handled,
            dropped=self._queue.dropped,
            errors=self._build_errors + self._queue.errors,
        )

    def _default_build(self, t: Transition) -> Any:
        from crucible_openlineage.build import build_event

        return build_event(t, namespace=self.namespace)

    def _deliver(self, item: tuple[Transition, Any]) -> None:
        self._send(item[1])

    # -- producer side (the bus's delivery thread) -------------------------------

    def observe(self, event: Any) -> None:
        """Take one crucible ``Event``; never blocks on the transport."""
        with self._lock:
            if self._closed:
                return
            transitions = self._tracker.feed(
                event.kind, event.job_id, event.ts, event.data, event.step
            )
        for t in transitions:
            self._offer(t)

    def _offer(self, t: Transition) -> None:
        try:
            built = self._build(t)
        except Exception as exc:  # a bad payload loses one lineage event, never the run
            with self._lock:
                self._build_errors += 1
            log.warning(
                "could not build the OpenLineage %s event of %s: %s", t.state, t.job_id, exc
            )
            return
        if self._queue.offer((t, built)):
            with self._lock:
                self._queued += 1

    def _dropped(self, item: tuple[Transition, Any]) -> None:
        t = item[0]
        with self._lock:
            first = t.job_id not in self._warned
            self._warned.add(t.job_id)
        if not first:
            return
        message = (
            f"OpenLineage {t.state} event of run {t.job_id} dropped: the lineage "
            f"transport is {self._queue.maxsize} events behind (down or slow?)"
        )
        log.warning("%s", message)
        try:
            self._warn(
                t.job_id,
                {
                    "level": "warning",
                    "message": message,
                    "event_type": t.state,
                    "dropped": self._queue.dropped,
                },
            )
        except Exception as exc:  # the warning itself must not fail the caller
            log.warning("could not record the drop warning: %s", exc)

    # -- ending --------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queue to be sent; True if it was."""
        return self._queue.flush(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """ABORT the open runs, send what is queued (up to ``timeout`` s), stop the sender.

        Returns whether everything queued was sent in time. Idempotent.
        """
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            transitions = self._tracker.close(self._clock())
        for t in transitions:
            self._offer(t)
        return self._queue.close(timeout)

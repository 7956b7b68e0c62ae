"""The sink: crucible events in, OpenLineage events out, never in the run's way.

:meth:`LineageSink.observe` runs on the event bus's plugin delivery thread.
It feeds the :class:`~crucible_openlineage.states.RunTracker`, builds the
OpenLineage events of the transitions and offers them to the sink's own
bounded queue without waiting; one sender thread takes them off and calls
the transport. So a lineage server that is down or hangs delays nothing but
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
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crucible_openlineage.states import RunTracker, Transition

__all__ = ["LineageSink", "SinkStats"]

log = logging.getLogger("crucible.openlineage")


@dataclass
class SinkStats:
    """Counters of a sink: events queued, sent, dropped (queue full), failed to send."""

    queued: int = 0
    sent: int = 0
    dropped: int = 0
    errors: int = 0


def _telemetry_warning(job_id: str, data: dict[str, Any]) -> None:
    """Append an ``openlineage.dropped`` warning to the run's telemetry.jsonl."""
    from crucible_core.records.events import EventBus

    with EventBus(host=None) as bus:
        bus.emit("openlineage.dropped", job_id=job_id, **data)


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
        self.stats = SinkStats()
        self.namespace = namespace
        self._send = send
        self._build = build or self._default_build
        self._warn = warn or _telemetry_warning
        self._clock = clock
        self._tracker = RunTracker()
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._errors_seen: set[str] = set()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="crucible-openlineage", daemon=True)
        self._thread.start()

    def _default_build(self, t: Transition) -> Any:
        from crucible_openlineage.build import build_event

        return build_event(t, namespace=self.namespace)

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
                self.stats.errors += 1
            log.warning(
                "could not build the OpenLineage %s event of %s: %s", t.state, t.job_id, exc
            )
            return
        try:
            self._queue.put_nowait(built)
        except queue.Full:
            with self._lock:
                self.stats.dropped += 1
                dropped = self.stats.dropped
                first = t.job_id not in self._warned
                self._warned.add(t.job_id)
            if first:
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
                            "dropped": dropped,
                        },
                    )
                except Exception as exc:  # the warning itself must not fail the caller
                    log.warning("could not record the drop warning: %s", exc)
            return
        with self._lock:
            self.stats.queued += 1

    # -- sender thread -----------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            try:
                self._send(item)
            except Exception as exc:
                with self._lock:
                    self.stats.errors += 1
                    first = type(exc).__name__ not in self._errors_seen
                    self._errors_seen.add(type(exc).__name__)
                if first:
                    log.warning("OpenLineage transport failed: %s: %s", type(exc).__name__, exc)
            else:
                with self._lock:
                    self.stats.sent += 1
            finally:
                self._queue.task_done()

    # -- ending --------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queue to be sent; True if it was."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

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
        done = self.flush(timeout)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the sender is stuck on a hanging transport; it is a daemon thread
        else:
            self._thread.join(max(0.0, min(timeout, 0.5)))
        return done

"""A bounded queue and one worker thread between the event bus and a sink that may be slow.

Why: a sink plugin's ``on_event`` runs on the event bus's plugin delivery
thread, which every plugin shares; the bus drops *all* plugins when that
thread falls 10 000 events behind. A sink that exports (an OpenTelemetry
collector, a lineage server, an MLflow tracking store) must therefore never
do its I/O there. :class:`SinkQueue` is the one place that does this right
for every sink (crucible-otel, crucible-openlineage, crucible-mlflow):

- :meth:`SinkQueue.offer` never blocks: ``put_nowait``; when the queue is
  full (the consumer is down or slow) or closed, the item is **dropped and
  counted** (:attr:`SinkQueue.dropped`) and ``on_drop(item)`` is called on
  the offering thread, so the sink can record the gap (see
  :func:`record_warning`). The run and the other plugins never wait.
- One daemon worker thread calls ``handle(item)`` for each item, in order.
  An exception there is counted (:attr:`SinkQueue.errors`), logged once per
  exception type, and the worker goes on.
- ``on_idle()`` (optional) runs on the worker when no item arrived for
  ``idle_s`` seconds: a sink that batches sends its batch there, so nothing
  waits in a batch while the run is quiet.
- :meth:`SinkQueue.call` runs a function on the worker after everything
  queued before it (a flush, a sink's final bookkeeping) and waits for it at
  most ``timeout`` seconds; :meth:`SinkQueue.close` stops taking items, runs
  an optional final function the same way and stops the worker, all within
  ``timeout``. What still hangs then is abandoned (daemon threads), so a dead
  endpoint cannot keep a finished process alive; should it come back, the
  worker skips whatever was still queued (counted in :attr:`SinkQueue.abandoned`)
  instead of handling it late.

:func:`bounded_call` runs any function on a daemon thread with a time limit
(a provider's shutdown); :func:`record_warning` appends a warning event to a
run's ``telemetry.jsonl``, the source of truth, without going through the
plugins again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

__all__ = [
    "DEFAULT_MAXSIZE",
    "DropLedger",
    "SinkQueue",
    "bounded_call",
    "record_warning",
]

DEFAULT_MAXSIZE: Final = 10_000
T = TypeVar("T")
log = logging.getLogger("crucible.sinkqueue")


class _Call:
    """Queued behind the items: the worker runs ``fn`` and sets ``done`` on reaching it."""

    def __init__(self, fn: Callable[[], object] | None, *, stop: bool = False) -> None:
        self.fn = fn
        self.stop = stop
        self.done = threading.Event()


def bounded_call(fn: Callable[[], object], timeout: float, name: str) -> bool:
    """Run ``fn`` on a daemon thread; True if it returned (or raised) within ``timeout`` s.

    An exception is logged, not raised: this is for flushing and shutting down
    exporters, whose failure must not fail the caller.
    """

    def run() -> None:
        try:
            fn()
        except Exception:
            log.exception("%s failed", name)

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    t.join(max(timeout, 0.0))
    return not t.is_alive()


def record_warning(kind: str, job_id: str, **data: Any) -> None:
    """Append one ``kind`` event (``level = "warning"`` unless given) to run ``job_id``'s
    telemetry.jsonl.

    Through a private bus with no plugin host: the line is appended, whole,
    beside the run's own bus (both append), and goes to no subscriber, so a
    sink that reports its own drops cannot feed itself. Never raises.
    """
    from crucible_core.records.events import EventBus

    data.setdefault("level", "warning")
    try:
        bus = EventBus(fsync="never")
        try:
            bus.emit(kind, job_id=job_id, **data)
        finally:
            bus.close()
    except Exception:
        log.exception("could not record %s for run %s", kind, job_id)


class DropLedger:
    """Events a sink dropped, counted per run, for the warnings it owes each run.

    :meth:`count` says whether a drop is the first of its run (the sink then
    writes a ``sink.dropped`` line into that run's telemetry at once);
    :meth:`report` writes each run's total when the sink closes.
    """

    def __init__(self, sink: str, queue_size: int) -> None:
        self.sink = sink
        self.queue_size = queue_size
        #: Drops by job id (``""`` for events of no job).
        self.by_job: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, job_id: str) -> bool:
        """Count one drop of ``job_id``'s events; True if it is that run's first."""
        with self._lock:
            first = job_id not in self.by_job
            self.by_job[job_id] = self.by_job.get(job_id, 0) + 1
        return first

    def warn(self, job_id: str, dropped: int, message: str) -> None:
        """A ``sink.dropped`` line in run ``job_id``'s telemetry (none for events of no job)."""
        if job_id:
            record_warning(
                "sink.dropped",
                job_id,
                sink=self.sink,
                dropped=dropped,
                queue_size=self.queue_size,
                message=message,
            )

    def report(self, message: Callable[[int], str]) -> None:
        """Each run's total drops in its telemetry: ``message(n)`` for ``n`` drops."""
        with self._lock:
            totals = list(self.by_job.items())
        for job_id, n in totals:
            self.warn(job_id, n, message(n))


class SinkQueue(Generic[T]):
    """Items in without blocking, ``handle(item)`` on one worker thread (see the module doc).

    ``name`` names the worker thread and the log lines; ``maxsize`` bounds the
    items waiting; ``on_drop(item)`` is called (on the offering thread) for
    every dropped item and must be cheap; an exception from it is logged.
    ``on_idle()`` is called on the worker once whenever no item arrived for
    ``idle_s`` seconds.
    """

    def __init__(
        self,
        handle: Callable[[T], object],
        *,
        name: str,
        maxsize: int = DEFAULT_MAXSIZE,
        on_drop: Callable[[T], object] | None = None,
        on_idle: Callable[[], object] | None = None,
        idle_s: float = 1.0,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        #: Items dropped because the queue was full or closed.
        self.dropped = 0
        #: Items whose ``handle`` raised (counted, then skipped).
        self.errors = 0
        #: Items handled without error.
        self.handled = 0
        #: Items still queued when :meth:`close` gave up on the worker (never handled).
        self.abandoned = 0
        self._given_up = False
        self._handle = handle
        self._on_drop = on_drop
        self._on_idle = on_idle
        self._idle_s = idle_s
        self._closed = False
        self._lock = threading.Lock()
        self._error_kinds: set[str] = set()
        self._queue: queue.Queue[T | _Call] = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (later items are dropped)."""
        return self._closed

    def pending(self) -> int:
        """Items (and calls) waiting for the worker now."""
        return self._queue.qsize()

    # -- producer side ---------------------------------------------------------

    def offer(self, item: T) -> bool:
        """Queue ``item``; False (dropped, counted, ``on_drop`` called) if full or closed."""
        if not self._closed:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                pass
            else:
                return True
        with self._lock:
            self.dropped += 1
        if self._on_drop is not None:
            try:
                self._on_drop(item)
            except Exception:
                log.exception("%s: recording a dropped item failed", self.name)
        return False

    # -- worker ------------------------------------------------------------------

    def _next(self) -> T | _Call:
        """The next item; ``on_idle`` runs (once per quiet spell) while none arrives."""
        if self._on_idle is None:
            return self._queue.get()
        try:
            return self._queue.get(timeout=self._idle_s)
        except queue.Empty:
            pass
        try:
            self._on_idle()
        except Exception:
            log.exception("%s: the idle call failed", self.name)
        return self._queue.get()

    def _work(self) -> None:
        while True:
            item = self._next()
            if isinstance(item, _Call):
                try:
                    if item.fn is not None and not self._given_up:
                        item.fn()
                except Exception:
                    log.exception("%s: a queued call failed", self.name)
                finally:
                    item.done.set()
                if item.stop:
                    return
                continue
            if self._given_up:
                with self._lock:
                    self.abandoned += 1
                continue
            try:
                self._handle(item)
            except Exception as exc:
                kind = type(exc).__name__
                with self._lock:
                    self.errors += 1
                    first = kind not in self._error_kinds
                    self._error_kinds.add(kind)
                if first:
                    log.warning("%s: an item could not be handled: %s: %s", self.name, kind, exc)
            else:
                with self._lock:
                    self.handled += 1

    def _call(self, call: _Call, deadline: float) -> bool:
        try:
            self._queue.put(call, timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Full:
            return False
        return call.done.wait(max(deadline - time.monotonic(), 0.0))

    # -- waiting -----------------------------------------------------------------

    def call(self, fn: Callable[[], object] | None, timeout: float) -> bool:
        """Run ``fn`` on the worker after every item queued so far; True if done in time.

        ``fn=None`` only waits for those items (a flush). Returns False if the
        worker did not get there within ``timeout`` seconds (it may still,
        later), or if the queue is closed.
        """
        if self._closed:
            return False
        return self._call(_Call(fn), time.monotonic() + timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until every item queued so far is handled; True if within ``timeout`` s."""
        return self.call(None, timeout)

    def close(self, timeout: float, final: Callable[[], object] | None = None) -> bool:
        """Take no more items; run ``final`` on the worker after the queue; stop the worker.

        All within ``timeout`` seconds; True if everything was done in time.
        Idempotent (a second call returns True at once).
        """
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        deadline = time.monotonic() + timeout
        stop = _Call(final, stop=True)
        if not self._call(stop, deadline):
            self._given_up = True  # a worker that comes back skips the rest
            return False
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        return True

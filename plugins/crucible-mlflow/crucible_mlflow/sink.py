"""The MLflow sink: the core's bounded :class:`~crucible_core.records.sinkqueue.SinkQueue`
between the bus and an MLflow tracking store.

Why a queue: ``on_event`` runs on the event bus's plugin delivery thread,
shared by every plugin; a tracking store that is down or slow (an HTTP
server that hangs, a locked SQLite file) must hold neither that thread nor
the run. :meth:`MlflowSink.offer` only queues the event (``put_nowait``);
one worker thread imports mlflow and makes the tracking calls
(:class:`~crucible_mlflow.track.Tracker`). When the queue is full the event
is dropped and counted (:attr:`MlflowSink.dropped`), the first drop is logged
(logger ``crucible_mlflow``), and the run's own telemetry.jsonl gets a
``sink.dropped`` warning event (``sink = "mlflow"``) at the run's first drop
and with the run's total when the sink closes.

:meth:`MlflowSink.close` (at process exit: ``CRUCIBLE_MLFLOW_FLUSH_S``)
sends what is queued, ends open runs as KILLED and stops, all within its
timeout; a store still hanging then is abandoned (daemon thread).

The process-wide sink is built from the environment on the first event
(:func:`deliver`); :func:`install` replaces it (tests, embedding).
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import TYPE_CHECKING

from crucible_core.records.sinkqueue import DropLedger, SinkQueue
from crucible_mlflow.config import MlflowConfig
from crucible_mlflow.track import Tracker

if TYPE_CHECKING:
    from crucible_core.records.events import Event

__all__ = ["MlflowSink", "current_sink", "deliver", "install", "reset"]

log = logging.getLogger("crucible_mlflow")


class MlflowSink:
    """Events in (never blocking), MLflow runs out (on a worker thread)."""

    def __init__(self, config: MlflowConfig, *, manifest_wait_s: float = 5.0) -> None:
        self.config = config
        self.tracker = Tracker(config, manifest_wait_s=manifest_wait_s)
        #: Events dropped, by job (the total is :attr:`dropped`).
        self.drops = DropLedger("mlflow", config.queue_size)
        self.queue: SinkQueue[Event] = SinkQueue(
            self.tracker.handle,
            name="crucible-mlflow",
            maxsize=config.queue_size,
            on_drop=self._drop,
            on_idle=self.tracker.flush,
            idle_s=1.0,
        )

    @property
    def dropped(self) -> int:
        """Events dropped because the queue was full (or the sink closed)."""
        return self.queue.dropped

    @property
    def errors(self) -> int:
        """Events whose tracking calls raised (counted, logged once per kind)."""
        return self.queue.errors

    def offer(self, event: Event) -> bool:
        """Queue ``event``; False (dropped and counted) if the queue is full or closed."""
        return self.queue.offer(event)

    def _drop(self, event: Event) -> None:
        first = self.queue.dropped == 1
        first_of_job = self.drops.count(event.job_id)
        why = "closed" if self.queue.closed else "not keeping up"
        if first:
            log.warning(
                "crucible-mlflow: the MLflow tracking store (%s) is %s; events are being "
                "dropped (queue of %d full) and the run goes on. telemetry.jsonl is complete.",
                self.config.tracking_uri,
                why,
                self.queue.maxsize,
            )
        if first_of_job:
            self.drops.warn(
                event.job_id,
                1,
                f"the MLflow sink is {why}: it drops events of this run from "
                f"{event.kind!r} on (queue of {self.queue.maxsize} full); this file stays complete",
            )

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything queued so far (metrics included); True if done within ``timeout``."""
        return self.queue.call(self.tracker.flush, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Send what is queued, end open runs as KILLED, stop; all within ``timeout`` s.

        Returns True if everything was recorded in time. Idempotent.
        """
        if self.queue.closed:
            return True
        done = self.queue.close(timeout, final=self.tracker.finish)
        if self.dropped:
            log.warning("crucible-mlflow: %d events were dropped in all", self.dropped)
            self.drops.report(lambda n: f"the MLflow sink dropped {n} events of this run")
        return done


# -- the process-wide sink ----------------------------------------------------------

_sink: MlflowSink | None = None
_configured = False
_global_lock = threading.Lock()


def current_sink() -> MlflowSink | None:
    """The process-wide sink (None when off or nothing was delivered yet)."""
    return _sink


def install(sink: MlflowSink | None) -> MlflowSink | None:
    """Make ``sink`` the process-wide sink (None: off); returns the one it replaces.

    The replaced sink is not closed: the caller owns it.
    """
    global _sink, _configured
    with _global_lock:
        previous, _sink, _configured = _sink, sink, True
    return previous


def reset(timeout: float | None = None) -> MlflowSink | None:
    """Close the process-wide sink (within ``timeout``, default its ``FLUSH_S``) and forget
    it: the next event builds a new one from the environment. Returns the closed sink."""
    global _sink, _configured
    with _global_lock:
        sink, _sink, _configured = _sink, None, False
    if sink is not None:
        sink.close(sink.config.flush_s if timeout is None else timeout)
    return sink


def deliver(event: Event) -> None:
    """Hand ``event`` to the process-wide sink, building it from the environment first."""
    sink = _sink
    if sink is None and not _configured:
        sink = _configure()
    if sink is not None:
        sink.offer(event)


def _configure() -> MlflowSink | None:
    global _sink, _configured
    with _global_lock:
        if _configured:
            return _sink
        _configured = True
        from crucible_core.errors import CrucibleError

        try:
            config = MlflowConfig.from_env()
        except CrucibleError as exc:
            log.warning("crucible-mlflow is off: %s (%s)", exc.message, exc.hint or "")
            return None
        if config.tracking_uri is None:
            return None
        _sink = MlflowSink(config)
        atexit.register(_close_at_exit, _sink)
        return _sink


def _close_at_exit(sink: MlflowSink) -> None:
    sink.close(sink.config.flush_s)

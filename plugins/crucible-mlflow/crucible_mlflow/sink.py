"""The MLflow sink: the core's bounded :class:`~crucible_core.records.sinkqueue.SinkQueue`
between the bus and an MLflow tracking store.

Why a queue: ``on_event`` runs on the event bus's plugin delivery thread,
shared by every plugin; a tracking store that is down or slow (an HTTP
server that hangs, a locked SQLite file) must hold neither that thread nor
the run. :meth:`MlflowSink.offer` only queues the event (``put_nowait``);
one worker thread forwards the events the tracker reads to the MLflow
writer process (:mod:`crucible_mlflow.process`), which imports mlflow and
makes the tracking calls (:class:`~crucible_mlflow.track.Tracker`) without
sharing this process's GIL. When the queue is full the event
is dropped and counted (:attr:`MlflowSink.dropped`), the first drop is logged
(logger ``crucible_mlflow``), and the run's own telemetry.jsonl gets a
``sink.dropped`` warning event (``sink = "mlflow"``) at the run's first drop
and with the run's total when the sink closes.

:meth:`MlflowSink.close` (at process exit: ``CRUCIBLE_MLFLOW_FLUSH_S``)
sends what is queued, ends open runs as KILLED and stops, all within its
timeout; a writer still hanging on its store then is killed.

The process-wide sink is built from the environment on the first event
(:func:`deliver`); :func:`install` replaces it (tests, embedding).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from crucible_core.records.sinkqueue import DropLedger, SinkQueue
from crucible_core.records.sinkslot import SinkSlot
from crucible_mlflow.config import MlflowConfig
from crucible_mlflow.process import WriterProcess

if TYPE_CHECKING:
    from crucible_core.records.events import Event

__all__ = ["MlflowSink", "current_sink", "deliver", "install", "reset"]

log = logging.getLogger("crucible_mlflow")


class MlflowSink:
    """Events in (never blocking), MLflow runs out (on a worker thread)."""

    def __init__(self, config: MlflowConfig, *, manifest_wait_s: float = 5.0) -> None:
        self.config = config
        #: The writer process (started on the first event the tracker reads).
        self.writer = WriterProcess(
            config, manifest_wait_s=manifest_wait_s, window=config.queue_size
        )
        #: Events dropped, by job (the total is :attr:`dropped`).
        self.drops = DropLedger("mlflow", config.queue_size)
        self.queue: SinkQueue[Event] = SinkQueue(
            self.writer.handle,
            name="crucible-mlflow",
            maxsize=config.queue_size,
            on_drop=self._drop,
            on_idle=self.writer.idle,
            idle_s=0.2,
        )

    @property
    def dropped(self) -> int:
        """Events dropped because the queue was full (or the sink closed)."""
        return self.queue.dropped

    @property
    def errors(self) -> int:
        """Events not forwarded or whose tracking calls raised (counted, logged once per kind)."""
        return self.queue.errors + self.writer.errors

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
        deadline = time.monotonic() + timeout
        done: list[bool] = []

        def flush() -> None:
            done.append(self.writer.flush(deadline - time.monotonic()))

        return self.queue.call(flush, timeout) and done == [True]

    def close(self, timeout: float = 10.0) -> bool:
        """Send what is queued, end open runs as KILLED, stop; all within ``timeout`` s.

        Returns True if everything was recorded in time. Idempotent.
        """
        if self.queue.closed:
            return True
        deadline = time.monotonic() + timeout
        closed: list[bool] = []

        def final() -> None:
            closed.append(self.writer.close(deadline - time.monotonic()))

        done = self.queue.close(timeout, final=final) and closed == [True]
        if not done:
            self.writer.kill()
        if self.dropped:
            log.warning("crucible-mlflow: %d events were dropped in all", self.dropped)
            self.drops.report(lambda n: f"the MLflow sink dropped {n} events of this run")
        return done


# -- the process-wide sink ----------------------------------------------------------


def _build() -> MlflowSink | None:
    from crucible_core.errors import CrucibleError

    try:
        config = MlflowConfig.from_env()
    except CrucibleError as exc:
        log.warning("crucible-mlflow is off: %s (%s)", exc.message, exc.hint or "")
        return None
    return None if config.tracking_uri is None else MlflowSink(config)


def _close(sink: MlflowSink, timeout: float | None) -> None:
    sink.close(sink.config.flush_s if timeout is None else timeout)


_slot: SinkSlot[MlflowSink] = SinkSlot(_build, _close, MlflowSink.offer)


#: The process-wide sink (None when off or nothing was delivered yet).
current_sink = _slot.current
#: ``install(sink)``: make ``sink`` (None: off) the process-wide sink; returns the one it
#: replaces, not closed (the caller owns it).
install = _slot.install
#: ``reset(timeout=None)``: close the process-wide sink within ``timeout`` (None:
#: its ``FLUSH_S``) and forget it, so the next event builds a new one from the
#: environment; returns the closed sink.
reset = _slot.reset
#: ``deliver(event)``: hand ``event`` to the process-wide sink, building it from the
#: environment first (what the ``on_event`` hook calls).
deliver = _slot.deliver

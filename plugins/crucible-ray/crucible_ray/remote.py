"""What runs on a Ray worker: a callable, or one claimed job with its context.

These are plain module-level functions (the executor wraps them with
``ray.remote``), so a node only needs ``crucible-ray`` importable, shipped
by the cluster image or the job's ``runtime_env``.

**A job on a node** gets a real :class:`~crucible_core.queue.worker.JobContext`
whose services are built there:

- ``ctx.emit`` / ``ctx.bus``: events go to the driver through the
  executor's Ray queue (an actor) as they are emitted, and the driver
  publishes them on its own bus, so ``telemetry.jsonl``, subscribers and
  ``on_event`` plugins see them while the job runs. The node writes no
  telemetry file itself (no duplicates).
- ``ctx.artifacts``, ``ctx.run_dir``, ``ctx.record_checkpoint``,
  ``ctx.lineage``: the node opens ``$CRUCIBLE_HOME`` (artifact store,
  run directories, SQLite database) at the driver's absolute path, which
  must be a **shared filesystem** (NFS, or the same machine in local mode).
  Uploading artifacts through the object store is not implemented.
- ``ctx.cancel`` is never set on the node: cancelling a job cancels its Ray
  task (``ray.cancel(force=True)``), which ends the process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import msgspec

from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.work import Job
from crucible_core.pipeline.cancel import CancelFlag
from crucible_core.records.events import Event, EventBus

if TYPE_CHECKING:
    from crucible_core.contracts import ArtifactStore
    from crucible_core.plugins import PluginHost
    from crucible_core.queue.scheduler import Scheduler
    from crucible_core.queue.worker import Worker
    from crucible_core.records.lineage import LineageRecorder

__all__ = ["call", "run_job"]

_encoder = msgspec.msgpack.Encoder()


def call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """``fn(*args, **kwargs)`` as ``(True, result)`` or ``(False, exception)``.

    Returning the exception (instead of raising it) keeps it unwrapped: Ray
    would wrap it in a RayTaskError, and the scheduler classifies errors by
    their class, ``code`` and ``retryable``.
    """
    try:
        return True, fn(*args, **kwargs)
    except Exception as exc:
        return False, exc


class _ForwardingBus(EventBus):
    """An in-memory bus whose every event is also put on the driver's Ray queue."""

    def __init__(self, queue: Any) -> None:
        super().__init__(sink=False)
        self._queue = queue
        self.sent = 0

    def publish(self, event: Event) -> None:
        if self._queue is not None:
            self._queue.put(_encoder.encode(event))  # blocks until the queue actor has it
            self.sent += 1
        super().publish(event)


class _NodeServices:
    """The parts of a Worker a JobContext reads, built on the node on first use."""

    def __init__(self, queue: Any) -> None:
        self.bus = _ForwardingBus(queue)

    @cached_property
    def scheduler(self) -> Scheduler:
        from crucible_core.queue.scheduler import Scheduler

        return Scheduler()

    @cached_property
    def host(self) -> PluginHost:
        from crucible_core.plugins import get_host

        return get_host()

    @cached_property
    def store(self) -> ArtifactStore:
        from crucible_core.records.artifacts import LocalArtifactStore

        return LocalArtifactStore()

    @cached_property
    def lineage(self) -> LineageRecorder:
        from crucible_core.records.lineage import LineageRecorder

        return LineageRecorder(self.scheduler.path)

    def close(self) -> None:
        self.bus.close()
        if "lineage" in self.__dict__:
            self.lineage.close()
        if "scheduler" in self.__dict__:
            self.scheduler.close()


def run_job(job: Job, resume_from: CheckpointRef | None, home: str, queue: Any) -> Any:
    """Run ``job``'s handler on this node: ``(ok, result or exception, events sent)``.

    ``home`` is the driver's absolute ``$CRUCIBLE_HOME`` (a shared
    filesystem); ``queue`` is the Ray queue events travel back on. The
    count of events lets the driver skip a final look at the queue when
    there can be nothing for this job in it.
    """
    from crucible_core.queue.worker import JobContext, resolve_handler

    os.environ["CRUCIBLE_HOME"] = home
    services = _NodeServices(queue)
    ctx = JobContext(
        job, worker=cast("Worker", services), cancel=CancelFlag(), resume_from=resume_from
    )
    try:
        outcome: tuple[bool, Any] = (True, resolve_handler(job)(ctx))
    except Exception as exc:
        outcome = (False, exc)
    services.close()
    return (*outcome, services.bus.sent)

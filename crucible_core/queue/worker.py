"""The worker: claims jobs from the scheduler and runs them until told to stop.

``crucible worker`` is this loop. :class:`Worker` runs ``concurrency`` slots,
each a thread that claims a job, runs its handler, records the outcome and
claims the next (completion and the next claim share one transaction). A
heartbeat thread renews the leases of the running jobs, relays cancellation
requests and enforces ``timeout_s``.

**How a job's work is found** (by ``Job.kind``; ``handlers=`` overrides or
adds kinds):

- ``custom``: ``payload = {"target": "pkg.mod:func", "args": {...}}``; the
  worker calls ``func(ctx, **args)`` and stores its return value (JSON data)
  as the job's result.
- ``experiment_step`` and ``evaluation``: ``payload`` is an Experiment, run by
  :func:`crucible_core.pipeline.runner.run_pipeline`.
- ``training_run``: ``payload`` is a TrainingJob (validated first), run by
  ``crucible_core.train.run:run_training_job(job, ctx)``, imported
  when the first such job arrives.
- anything else is refused (``unsupported``, not retried).

**Elsewhere.** ``executor=`` hands each job to a job runner instead of
running its handler in the slot's thread: an object with ``run_job(ctx)``
that runs the job wherever it runs things (``crucible worker --executor
ray`` runs jobs as Ray tasks, see crucible-ray) and returns its result or
raises its error. The slot still owns the lease, heartbeats, cancellation
(the runner watches ``ctx.cancel``) and the recorded outcome.

**The context** (:class:`JobContext`) gives a handler its job, a cooperative
cancellation token (``ctx.cancel.is_set()``: set when someone cancels the
job, when ``timeout_s`` passes, when the lease is lost or the worker shuts
down; ``ctx.cancel.reason`` says which), the event bus (``ctx.emit``), the
artifact store, the plugin host, and ``ctx.resume_from``: the last
CheckpointRef recorded for this job (None on a first run). A handler that
saves checkpoints calls ``ctx.record_checkpoint(ref)``; when its worker dies
and the lease expires, the next claimant gets that ref in ``resume_from``
and should load it (if its backend supports ``load_state``) instead of
starting over.

**Outcomes.** A handler that returns succeeds; one that raises fails through
the scheduler's retry policy. A job whose cancellation was requested ends
``cancelled`` whatever its handler did. If the lease was lost meanwhile, the
outcome is discarded (the job already ran elsewhere or was requeued:
at-least-once).

**Timeouts.** When ``timeout_s`` passes, the handler is told to stop
(``ctx.cancel.reason == "timeout"``) and the worker keeps renewing the lease
until it really has: only then is the attempt recorded as a retryable
``DeadlineExceeded`` (whatever the handler returned), so a retry never
starts while the first attempt still runs. A handler that ignores the
request keeps its job ``running`` until it returns or its process dies (then
the lease lapses after ``lease_s`` and the job is requeued).

**Stopping.** :meth:`Worker.stop` (SIGTERM/SIGINT in the CLI) drains: no new
claims; running jobs may finish for ``drain_timeout_s``; then their
handlers are told to stop (``reason = "shutdown"``). A handler that then
raises (having saved a checkpoint, say) has its job released: requeued at
once for another worker, without counting the attempt; one that returns has
finished its job. After a short grace :meth:`Worker.run` returns even if
handlers still run, but their jobs are not released: the heartbeat keeps
their leases while they run in this process, and when the process exits the
lease lapses ``lease_s`` later. So two attempts of one job never overlap.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, cast, runtime_checkable

import msgspec

from crucible_core._options import check_count, check_seconds
from crucible_core.contracts import ArtifactStore
from crucible_core.errors import (
    ConfigError,
    Conflict,
    CrucibleError,
    DeadlineExceeded,
    UnsupportedError,
)
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.codec import convert
from crucible_core.ir.lineage import Edge
from crucible_core.ir.work import Job
from crucible_core.pipeline.cancel import CancelFlag
from crucible_core.queue.scheduler import DEFAULT_LEASE_S, Scheduler
from crucible_core.records import paths
from crucible_core.records.events import EventBus

if TYPE_CHECKING:
    from crucible_core.plugins import PluginHost
    from crucible_core.records.lineage import LineageRecorder

__all__ = ["Handler", "JobContext", "JobRunner", "Worker", "WorkerStats", "resolve_handler"]

log = logging.getLogger("crucible.worker")

#: A job handler: called with the job's context, returns the job's result.
Handler = Callable[["JobContext"], Any]
TRAINING_HANDLER: Final = "crucible_core.train.run:run_training_job"


@runtime_checkable
class JobRunner(Protocol):
    """Runs one claimed job somewhere else (a cluster); ``Worker(executor=...)`` takes one."""

    def run_job(self, ctx: JobContext) -> Any: ...


class JobContext:
    """What a running job's handler gets (see the module docstring)."""

    def __init__(
        self,
        job: Job,
        *,
        worker: Worker,
        cancel: CancelFlag,
        resume_from: CheckpointRef | None,
    ) -> None:
        self.job = job
        self.cancel = cancel
        self.resume_from = resume_from
        self._worker = worker

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def payload(self) -> Any:
        return self.job.payload

    @property
    def attempt(self) -> int:
        """Which attempt this is (1 on the first run)."""
        return self.job.attempts

    @property
    def run_dir(self) -> Path:
        """``$CRUCIBLE_HOME/runs/<job_id>`` (created on first use)."""
        directory = paths.run_dir(self.job.id)
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    @property
    def bus(self) -> EventBus:
        return self._worker.bus

    @property
    def scheduler(self) -> Scheduler:
        return self._worker.scheduler

    @property
    def host(self) -> PluginHost:
        return self._worker.host

    @property
    def artifacts(self) -> ArtifactStore:
        return self._worker.store

    @property
    def lineage(self) -> LineageRecorder:
        return self._worker.lineage

    def emit(self, kind: str, /, **data: Any) -> None:
        """Emit an event for this job; ``step`` and ``epoch`` keywords fill those fields."""
        step = data.pop("step", None)
        epoch = data.pop("epoch", None)
        self._worker.bus.emit(kind, job_id=self.job.id, step=step, epoch=epoch, **data)

    def record_checkpoint(self, ref: CheckpointRef) -> None:
        """Make ``ref`` the checkpoint a recovery resumes from (and emit ``train.checkpoint``)."""
        self._worker.scheduler.record_checkpoint(self.job.id, ref)
        self.emit("train.checkpoint", step=ref.step, uri=ref.uri, checkpoint_kind=ref.kind)


def _custom(job: Job) -> Handler:
    payload = job.payload
    if not isinstance(payload, Mapping) or not isinstance(
        cast(Mapping[str, Any], payload).get("target"), str
    ):
        raise ConfigError(
            f"custom job {job.id!r} needs payload {{'target': 'pkg.mod:func', 'args': {{...}}}}",
            hint="set payload.target to an importable function taking (ctx, **args)",
        )
    body = cast(Mapping[str, Any], payload)
    args: Any = body.get("args") or {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"custom job {job.id!r}: payload.args must be a table of arguments")
    from crucible_core._imports import import_object

    try:
        func = import_object(str(body["target"]))
    except CrucibleError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"custom job {job.id!r}: cannot import {body['target']!r} "
            f"({type(exc).__name__}: {exc})",
            hint="check the module path and that it is installed where the worker runs",
        ) from None
    kwargs = dict(cast(Mapping[str, Any], args))
    return lambda ctx: func(ctx, **kwargs)


def _pipeline(job: Job) -> Handler:
    from crucible_core.ir.experiment import Experiment

    experiment = convert(job.payload, Experiment)

    def run(ctx: JobContext) -> Any:
        from crucible_core.pipeline.runner import run_pipeline

        outputs = run_pipeline(
            experiment,
            ctx.job,
            host=ctx.host,
            bus=ctx.bus,
            store=ctx.artifacts,
            cancel=ctx.cancel,
            lineage=ctx.lineage,
        )
        return msgspec.to_builtins(outputs, enc_hook=repr)

    return run


def _training(job: Job) -> Handler:
    from crucible_core.ir.training import TrainingJob

    convert(job.payload, TrainingJob)  # refuse a bad payload before importing anything
    module_name, _, attr = TRAINING_HANDLER.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise UnsupportedError(
            "training_run jobs need crucible_core.train, which this installation lacks",
            hint="upgrade crucible-core",
        ) from None
    run_training_job = getattr(module, attr)

    def run(ctx: JobContext) -> Any:
        # The handler owns the run directory (RunLock) before it reads the run's
        # saved state, so a retry beside a hung attempt is refused, not interleaved.
        return run_training_job(ctx.job, ctx)

    return run


_BUILTIN_HANDLERS: Final[dict[str, Callable[[Job], Handler]]] = {
    "custom": _custom,
    "experiment_step": _pipeline,
    "evaluation": _pipeline,
    "training_run": _training,
}


def resolve_handler(
    job: Job, handlers: Mapping[str, Callable[[Job], Handler]] | None = None
) -> Handler:
    """The handler for ``job`` (``handlers`` maps a kind to a handler factory)."""
    factory = (handlers or {}).get(job.kind) or _BUILTIN_HANDLERS.get(job.kind)
    if factory is None:
        known: list[str] = sorted({*_BUILTIN_HANDLERS, *(handlers or {})})
        raise UnsupportedError(
            f"this worker has no handler for jobs of kind {job.kind!r}",
            hint=f"kinds it runs: {', '.join(known)}",
        )
    return factory(job)


@dataclass
class WorkerStats:
    """What a worker did, by outcome."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    released: int = 0
    discarded: int = 0


@dataclass
class _Active:
    job: Job
    flag: CancelFlag
    deadline: float | None
    settled: bool = False  # outcome already recorded elsewhere (lease lost, release)
    timed_out: bool = False  # past its deadline: told to stop, recorded once it has


class Worker:
    """Claims and runs jobs from ``scheduler`` with ``concurrency`` slots (module docstring)."""

    def __init__(
        self,
        scheduler: Scheduler | None = None,
        *,
        concurrency: int = 1,
        lease_s: float = DEFAULT_LEASE_S,
        heartbeat_s: float | None = None,
        poll_s: float = 0.25,
        drain_timeout_s: float = 30.0,
        worker_id: str | None = None,
        host: PluginHost | None = None,
        bus: EventBus | None = None,
        store: ArtifactStore | None = None,
        handlers: Mapping[str, Callable[[Job], Handler]] | None = None,
        executor: JobRunner | None = None,
    ) -> None:
        concurrency = check_count("concurrency", concurrency)
        if executor is not None and not isinstance(executor, JobRunner):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ConfigError(
                f"the executor {type(executor).__name__} runs callables, not worker jobs "
                "(it has no run_job(ctx))",
                hint="leave --executor unset (jobs run in the worker's own threads) or use one "
                "that runs jobs, e.g. ray (crucible-ray)",
                option="executor",
            )
        if executor is not None and handlers:
            raise ConfigError(
                "handlers= and executor= do not combine: the executor resolves handlers "
                "where it runs the job",
                option="executor",
            )
        lease_s = check_seconds("lease_s", lease_s)
        poll_s = check_seconds("poll_s", poll_s)
        drain_timeout_s = check_seconds("drain_timeout_s", drain_timeout_s, allow_zero=True)
        if heartbeat_s is None:
            heartbeat_s = lease_s / 3
        elif check_seconds("heartbeat_s", heartbeat_s) > lease_s / 2:
            # A lease renewed less often than twice per term lapses on a live job.
            raise ConfigError(
                f"heartbeat_s ({heartbeat_s:g}) must be at most half of lease_s ({lease_s:g})",
                hint="leave heartbeat_s unset (lease_s / 3) or lengthen the lease",
                option="heartbeat_s",
            )
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.heartbeat_s = float(heartbeat_s)
        self.poll_s = poll_s
        self.drain_timeout_s = drain_timeout_s
        self.worker_id = worker_id or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        )
        self._host = host
        self._bus = bus
        self._own_bus = bus is None
        self._store = store
        self._lineage: LineageRecorder | None = None
        self._handlers = dict(handlers or {})
        self.executor = executor
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._hurry = threading.Event()
        self._claims_left: int | None = None
        self._exit_when_idle = False
        self.stats = WorkerStats()

    # -- services (built on first use) -----------------------------------------

    @property
    def host(self) -> PluginHost:
        if self._host is None:
            from crucible_core.plugins import get_host

            self._host = get_host()
        return self._host

    @property
    def bus(self) -> EventBus:
        if self._bus is None:
            with self._lock:
                if self._bus is None:
                    # Through the host, so plugins' on_event hooks see every event.
                    self._bus = EventBus(host=self.host)
        return self._bus

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            from crucible_core.records.artifacts import LocalArtifactStore

            self._store = LocalArtifactStore()
        return self._store

    @property
    def lineage(self) -> LineageRecorder:
        if self._lineage is None:
            with self._lock:
                if self._lineage is None:
                    from crucible_core.records.lineage import LineageRecorder

                    self._lineage = LineageRecorder(self.scheduler.path)
        return self._lineage

    # -- control ----------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming and drain; ``now`` cuts the drain short (running jobs get a short
        grace to stop, then are released). Safe from a signal handler or another thread."""
        if now:
            self._hurry.set()
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def active_jobs(self) -> list[str]:
        """Ids of the jobs this worker is running now."""
        with self._lock:
            return list(self._active)

    def run(self, *, max_jobs: int | None = None, exit_when_idle: bool = False) -> WorkerStats:
        """Run until :meth:`stop` (or ``max_jobs`` claimed, or the queue is empty and idle).

        ``exit_when_idle`` stops once no job is pending, queued or running
        anywhere (so jobs held by a dead worker's lease are waited for).
        The database is checked first (``PRAGMA quick_check``): a damaged
        file raises a ConfigError naming it and the recovery command instead
        of handing out wrong jobs.
        """
        try:
            self.scheduler.check()
        except BaseException:
            if self._bus is not None and self._own_bus:
                self._bus.close()  # built before run() (a progress subscriber, say)
            raise
        self._claims_left = max_jobs
        self._exit_when_idle = exit_when_idle
        slots = [
            threading.Thread(target=self._slot, name=f"crucible-slot-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        beat = threading.Thread(target=self._heartbeat_loop, name="crucible-heartbeat", daemon=True)
        for t in slots:
            t.start()
        beat.start()
        try:
            while any(t.is_alive() for t in slots) and not self._stopping.is_set():
                self._stopping.wait(0.1)
            self._stopping.set()
            self._drain(slots)
        finally:
            self._stopping.set()
            beat.join(timeout=1.0)
            if self._bus is not None and self._own_bus:
                self._bus.close()
            if self._lineage is not None:
                self._lineage.close()
        return self.stats

    def _wait_slots(self, slots: list[threading.Thread], seconds: float) -> bool:
        """Wait up to ``seconds`` for the slots to end (cut short by ``stop(now=True)``)."""
        deadline = time.monotonic() + seconds
        while any(t.is_alive() for t in slots):
            if time.monotonic() >= deadline or self._hurry.is_set():
                return False
            for t in slots:
                t.join(0.05)
        return True

    def _drain(self, slots: list[threading.Thread]) -> None:
        if self._wait_slots(slots, self.drain_timeout_s):
            return
        with self._lock:
            active = list(self._active.values())
        for a in active:
            a.flag.set("shutdown")
        # A short grace lets handlers save a checkpoint and raise (their jobs are released).
        grace = min(1.0 if self._hurry.is_set() else 5.0, self.lease_s / 2)
        self._hurry.clear()
        if self._wait_slots(slots, grace):
            return
        # Not released: another worker would run the job while this handler
        # still does. The heartbeat keeps the lease until the handler returns;
        # if this process exits first, the lease lapses lease_s later.
        for a in self._unsettled():
            log.warning(
                "job %s ignores the stop request; it stays leased to %s until its handler "
                "returns or this process exits",
                a.job.id,
                self.worker_id,
            )

    # -- slots ------------------------------------------------------------------

    def _take_claim(self) -> bool:
        with self._lock:
            if self._claims_left is None:
                return True
            if self._claims_left <= 0:
                return False
            self._claims_left -= 1
            return True

    def _give_back_claim(self) -> None:
        with self._lock:
            if self._claims_left is not None:
                self._claims_left += 1

    def _claim(self) -> Job | None:
        if self._stopping.is_set() or not self._take_claim():
            return None
        try:
            job = self.scheduler.claim(self.worker_id, self.lease_s)
        except CrucibleError as exc:
            log.warning("claim failed: %s", exc)
            job = None
        if job is None:
            self._give_back_claim()
        return job

    def _idle_everywhere(self) -> bool:
        return not self.scheduler.unfinished()

    def _slot(self) -> None:
        job: Job | None = None
        while not self._stopping.is_set():
            if job is None:
                job = self._claim()
            if job is None:
                if self._claims_left == 0:
                    return
                if self._exit_when_idle and self._idle_everywhere():
                    return
                self._stopping.wait(self.poll_s * (0.5 + secrets.randbelow(1000) / 1000))
                continue
            job = self._execute(job)

    def _execute(self, job: Job) -> Job | None:
        """Run one claimed job; record its outcome; return the next claimed job, if any."""
        self._count("claimed")
        timeout = job.constraints.timeout_s or job.resources.timeout_s
        flag = CancelFlag()
        active = _Active(job, flag, time.monotonic() + timeout if timeout else None)
        with self._lock:
            self._active[job.id] = active
        outcome: tuple[str, Any]
        try:
            resume = self.scheduler.last_checkpoint(job.id)
            ctx = JobContext(job, worker=self, cancel=flag, resume_from=resume)
            self.bus.emit(
                "job.state",
                job_id=job.id,
                status="running",
                attempt=job.attempts,
                worker=self.worker_id,
                resume_from=resume.uri if resume is not None else None,
            )
            if job.constraints.depends_on:
                self.lineage.add_edges(
                    Edge(src=job.id, dst=d, kind="depends_on") for d in job.constraints.depends_on
                )
            if self.executor is not None:
                outcome = ("ok", self.executor.run_job(ctx))
            else:
                outcome = ("ok", resolve_handler(job, self._handlers)(ctx))
        except Exception as exc:
            outcome = ("error", exc)
        with self._lock:
            self._active.pop(job.id, None)
            settled = active.settled
            active.settled = True
        nxt: Job | None = None
        if settled:
            self._count("discarded")
        elif active.timed_out:
            # Recorded only now that the handler has stopped: a retry may start.
            nxt = self._record(job, ("error", _deadline_error(job)))
        elif outcome[0] == "error" and flag.reason == "shutdown":
            self._release(job)
        else:
            nxt = self._record(job, outcome)
        self.bus.close_job(job.id)
        return nxt

    def _release(self, job: Job) -> None:
        """Requeue a job its handler abandoned because this worker is shutting down."""
        try:
            self.scheduler.release(job.id, worker_id=self.worker_id)
        except CrucibleError as exc:
            log.warning("could not release %s: %s", job.id, exc)
            return
        self._count("released")
        with contextlib.suppress(CrucibleError):
            self.bus.emit("job.state", job_id=job.id, status="queued", worker=self.worker_id)

    def _record(self, job: Job, outcome: tuple[str, Any]) -> Job | None:
        kind, value = outcome
        try:
            if kind == "ok":
                if not self._stopping.is_set() and self._take_claim():
                    try:
                        nxt = self.scheduler.complete_and_claim(
                            job.id, value, worker_id=self.worker_id, lease_s=self.lease_s
                        )
                    except BaseException:
                        self._give_back_claim()
                        raise
                    if nxt is None:
                        self._give_back_claim()
                    self._finished(job.id)
                    return nxt
                self.scheduler.complete(job.id, value, worker_id=self.worker_id)
            else:
                self.scheduler.fail(job.id, value, worker_id=self.worker_id)
        except Conflict as exc:
            self._count("discarded")
            log.warning("outcome of %s discarded: %s", job.id, exc)
            return None
        except ConfigError as exc:
            # An unstorable result: the attempt fails (not retried) instead.
            with contextlib.suppress(CrucibleError):
                self.scheduler.fail(job.id, exc, worker_id=self.worker_id)
        except CrucibleError as exc:
            log.warning("could not record the outcome of %s: %s", job.id, exc)
            return None
        self._finished(job.id)
        return None

    def _finished(self, job_id: str) -> None:
        try:
            status = self.scheduler.get(job_id).status
        except CrucibleError:
            return
        self._count(
            {"succeeded": "succeeded", "cancelled": "cancelled", "queued": "retried"}.get(
                status, "failed"
            )
        )
        with contextlib.suppress(CrucibleError):
            self.bus.emit("job.state", job_id=job_id, status=status, worker=self.worker_id)

    def _count(self, outcome: str) -> None:
        with self._lock:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)

    # -- heartbeats, cancellation, timeouts --------------------------------------

    def _unsettled(self) -> list[_Active]:
        with self._lock:
            return [a for a in self._active.values() if not a.settled]

    def _heartbeat_loop(self) -> None:
        """Renew leases every ``heartbeat_s``; check timeouts every 0.1 s; run until drained."""
        next_beat = time.monotonic() + self.heartbeat_s
        while not (self._stopping.is_set() and not self._unsettled()):
            if self.scheduler.closed:
                return  # the process is ending: the leases lapse on their own
            time.sleep(min(0.1, self.heartbeat_s))
            now = time.monotonic()
            for a in self._unsettled():
                if a.deadline is not None and now > a.deadline:
                    self._time_out(a)
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                self._beat()

    def _beat(self) -> None:
        for a in self._unsettled():
            try:
                lease = self.scheduler.heartbeat(
                    a.job.id, worker_id=self.worker_id, lease_s=self.lease_s
                )
            except Conflict:
                a.flag.set("lease_lost")
                with self._lock:
                    a.settled = True
                continue
            except CrucibleError as exc:
                log.warning("heartbeat for %s failed: %s", a.job.id, exc)
                continue
            if lease.cancel_requested:
                a.flag.set("cancelled")

    def _time_out(self, a: _Active) -> None:
        """Tell a job past its deadline to stop; its slot records the timeout once it has.

        The job stays ``running`` (and its lease renewed) until then: failing
        it here would requeue it while this attempt still runs.
        """
        with self._lock:
            if a.settled or a.timed_out:
                return
            a.timed_out = True
        a.flag.set("timeout")
        log.warning("job %s ran past its timeout; waiting for its handler to stop", a.job.id)


def _deadline_error(job: Job) -> DeadlineExceeded:
    limit = job.constraints.timeout_s or job.resources.timeout_s or 0.0
    return DeadlineExceeded(
        f"job {job.id!r} ran past its timeout of {limit:g} s",
        hint="raise constraints.timeout_s, or make the job check ctx.cancel",
    )

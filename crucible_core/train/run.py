"""Entry points of a training run: the library call and the worker's job handler.

:func:`run_training` (used by ``crucible train`` and ``crucible resume``)
owns the run directory (:class:`~crucible_core.records.runstatus.RunLock`)
for the whole run, cleans what a killed process left, and runs the recipe of
the job's ``workflow`` (:func:`crucible_core.train.sft.run_sft`,
:func:`crucible_core.train.dpo.run_dpo`, :func:`crucible_core.train.rl.run_rl`,
:func:`crucible_core.train.distill.run_distill`) in a
:class:`~crucible_core.pipeline.scope.RunScope`. :func:`run_training_job`
is the worker's handler for ``training_run`` jobs: a job reclaimed after its
worker died resumes from the run directory's ``trainer_state.json``, the one
record of where a training run can continue (the scheduler keeps no copy).

What a run writes, under ``$CRUCIBLE_HOME/runs/<job_id>/``: ``manifest.json``
(schema :class:`~crucible_core.records.manifest.RunManifest`),
``telemetry.jsonl`` (every event), ``trainer_state.json`` and ``states/``
(:mod:`crucible_core.train.state`), ``.owner.lock``, ``checkpoints/`` (the
backend's, for file backends) and ``metrics.json``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from crucible_core.contracts import CancelToken
from crucible_core.errors import NotFound
from crucible_core.ids import new_id
from crucible_core.ir.codec import convert, to_builtins
from crucible_core.ir.training import TrainingJob
from crucible_core.ir.work import Job
from crucible_core.pipeline.scope import RunScope
from crucible_core.records import paths
from crucible_core.records.artifacts import LocalArtifactStore
from crucible_core.records.runstatus import RunLock
from crucible_core.train import state as disk
from crucible_core.train.distill import run_distill
from crucible_core.train.dpo import run_dpo
from crucible_core.train.loop import LoopState
from crucible_core.train.plan import training_experiment
from crucible_core.train.prepare import PreparedData
from crucible_core.train.rl import run_rl
from crucible_core.train.sft import run_sft
from crucible_core.train.steps import TrainingOutcome, manifest_start

__all__ = ["new_job_id", "run_training", "run_training_job"]


def new_job_id(prefix: str = "train") -> str:
    """A run id for a job that has none (:func:`crucible_core.ids.new_id`)."""
    return new_id(prefix)


def run_training(
    job: TrainingJob,
    *,
    job_id: str | None = None,
    host: Any = None,
    bus: Any = None,
    cancel: CancelToken | None = None,
    resume: LoopState | None = None,
    window: int = 2,
    plan: Mapping[str, Any] | None = None,
    prepared: PreparedData | None = None,
    backend: Any = None,
) -> TrainingOutcome:
    """Run ``job`` end to end as run ``job_id`` (default: ``job.job_id`` or a new id).

    ``resume`` continues the run from its newest checkpoint (see
    :func:`~crucible_core.train.state.read_loop_state`). ``plan`` (the plan's
    estimate) is recorded in the manifest beside the actuals. ``prepared``
    and ``backend`` (from ``crucible plan``) are used instead of preparing the
    data and creating the backend again.
    """
    run_id = job_id or job.job_id or new_job_id()
    job = msgspec.structs.replace(job, job_id=run_id)
    # The payload is plain data, as the StageContext contract promises stages.
    work = Job(
        id=run_id, kind="training_run", payload=to_builtins(job), created_at=datetime.now(UTC)
    )
    return _run(
        work,
        job,
        host=host,
        bus=bus,
        cancel=cancel,
        resume=resume,
        window=window,
        plan=plan,
        prepared=prepared,
        backend=backend,
    )


def _run(
    work: Job,
    job: TrainingJob,
    *,
    host: Any,
    bus: Any,
    cancel: CancelToken | None,
    resume: LoopState | None,
    window: int,
    plan: Mapping[str, Any] | None,
    prepared: PreparedData | None = None,
    backend: Any = None,
    lock: RunLock | None = None,
) -> TrainingOutcome:
    """Run ``job`` as ``work``, owning its directory (``lock``, if the caller already
    holds it, else taken here) for the whole run."""
    experiment = msgspec.structs.replace(
        training_experiment(job, work.id), seeds=[job.learning_config.seed]
    )
    run_dir = paths.run_dir(work.id)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir) if lock is None else contextlib.nullcontext(lock) as owner:
        disk.clean_leftovers(run_dir)
        LocalArtifactStore().clean_staging()
        scope = RunScope(
            experiment,
            work,
            host=host,
            bus=bus,
            cancel=cancel,
            backend_resolver=(lambda _name: backend) if backend is not None else None,
        )
        with scope:
            manifest_start(scope.record, job, owner.owner(), plan)
            recipe = {"dpo": run_dpo, "rl": run_rl, "distill": run_distill}.get(
                job.workflow, run_sft
            )
            return scope.call(
                lambda: recipe(scope, job, prepared=prepared, resume=resume, window=window)
            )


def run_training_job(job: Job, ctx: Any) -> Mapping[str, Any]:
    """Worker handler for ``training_run`` jobs: run (or resume) the job's TrainingJob.

    A job reclaimed after its worker died resumes from the newest checkpoint
    its run directory holds (``trainer_state.json``), so no finished step is
    lost and none is applied twice.
    """
    training = msgspec.structs.replace(convert(job.payload, TrainingJob), job_id=job.id)
    # Own the run before reading its saved state: a retry started while a hung
    # attempt still runs must not read (or write) what that attempt is writing.
    with RunLock(paths.run_dir(job.id)) as lock:
        try:
            resume: LoopState | None = disk.read_loop_state(paths.run_dir(job.id))
        except NotFound:
            resume = None
        outcome = _run(
            job,
            training,
            host=getattr(ctx, "host", None),
            bus=getattr(ctx, "bus", None),
            cancel=getattr(ctx, "cancel", None),
            resume=resume,
            window=2,
            plan=None,
            lock=lock,
        )
    return dict(to_builtins(outcome))

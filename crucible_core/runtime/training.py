"""The supervised training workflow: a TrainingJob run as a stage DAG on any backend.

The stages (registered by core through ``register_stages``, so they run on
every backend that satisfies the training contract)::

    data.load -> data.tokenize -> train.loop -> train.evaluate --+--> train.log_metrics
                                             \\-> train.save ------/

``data.*`` come from crucible-datasets; ``train.*`` live here. What a run
writes, under ``$CRUCIBLE_HOME/runs/<job_id>/``:

- ``manifest.json``: the job, its config digest, dataset hash, tokenizer and
  chat-template hash, seed, versions (Python, crucible, plugins, torch,
  tinker when present), the backend and model, every checkpoint and
  artifact with its sha256, the loss curve's ends, tokens, cost and time
  (actual beside the plan's estimate);
- ``telemetry.jsonl``: every event;
- ``trainer_state.json``: the loop state of the newest checkpoint (what
  ``crucible resume`` continues from), and ``states/step-NNNNNN.json`` the
  loop state of each kept checkpoint (what a resume falls back to when the
  newest checkpoint fails its sha256 check);
- ``.owner.lock``: held (``flock``) by the process working on the run, see
  :mod:`crucible_core.runtime.runstatus`;
- ``checkpoints/step-NNNNNN/``: state checkpoints the policy keeps (file
  backends), and ``checkpoints/final/sampler``: the weights to sample from;
- ``metrics.json``: the loss curve and evaluation.

:func:`run_training` is the library entry (used by ``crucible train`` and
``crucible resume``); :func:`run_training_job` is the worker's handler for
``training_run`` jobs, resuming automatically from the job's last recorded
checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.contracts import CancelToken, StageContext, TrainingSession
from crucible_core.errors import ConfigError, IntegrityError, NotFound
from crucible_core.ids import new_id
from crucible_core.ir.backend import CheckpointRef, Datum
from crucible_core.ir.codec import convert, to_builtins
from crucible_core.ir.experiment import Experiment
from crucible_core.ir.lineage import Artifact, Edge
from crucible_core.ir.training import Full, TrainingJob
from crucible_core.ir.work import Job
from crucible_core.runtime import paths, sampled_eval, trainloop
from crucible_core.runtime.artifacts import (
    LocalArtifactStore,
    add_artifact,
    config_digest,
    digest_path,
    read_manifest,
    update_manifest,
    uri_path,
    verify_run,
    write_json,
)
from crucible_core.runtime.plan import training_experiment
from crucible_core.runtime.runstatus import RunLock
from crucible_core.runtime.trainloop import LoopResult, LoopState, SavedCheckpoint

__all__ = [
    "STATE_FILE",
    "EvaluateStage",
    "LogMetricsStage",
    "SaveStage",
    "TrainLoopStage",
    "TrainingOutcome",
    "new_job_id",
    "read_loop_state",
    "run_training",
    "run_training_job",
]

STATE_FILE = "trainer_state.json"
STATES_DIR = "states"
log = logging.getLogger(__name__)


def new_job_id(prefix: str = "train") -> str:
    """A run id for a job that has none (:func:`crucible_core.ids.new_id`)."""
    return new_id(prefix)


def training_job_of(ctx: StageContext) -> TrainingJob:
    """The run's TrainingJob, with ``job_id`` set to the run's id."""
    payload: Any = ctx.job.payload
    job = payload if isinstance(payload, TrainingJob) else convert(payload, TrainingJob)
    if job.job_id != ctx.job_id:
        job = msgspec.structs.replace(job, job_id=ctx.job_id)
    return job


def _deadline() -> float:
    raw = os.environ.get("CRUCIBLE_CALL_DEADLINE_S")
    if not raw:
        return trainloop.DEFAULT_DEADLINE_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"CRUCIBLE_CALL_DEADLINE_S={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"CRUCIBLE_CALL_DEADLINE_S must be > 0, got {value}")
    return value


def read_loop_state(run_dir: Path) -> LoopState:
    """The loop state saved with a run's newest checkpoint; NotFound if it has none."""
    path = run_dir / STATE_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=LoopState)
    except FileNotFoundError:
        raise NotFound(
            f"{run_dir}: the run saved no checkpoint to resume from",
            hint="runs are resumable after their first checkpoint (checkpoint_policy.save_every)",
        ) from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{path}: unreadable loop state ({exc})") from None


def _state_path(run_dir: Path, step: int) -> Path:
    return run_dir / STATES_DIR / f"step-{step:06d}.json"


def _record_checkpoint(run_dir: Path, saved: SavedCheckpoint, state: LoopState) -> None:
    """Persist the loop state, then list the checkpoint in the manifest (with hashes if local)."""
    write_json(_state_path(run_dir, saved.step), state)
    write_json(run_dir / STATE_FILE, state)
    ref = saved.ref
    path = uri_path(ref.uri)
    sha: str | None = None
    size: int | None = None
    if path is not None and path.exists():
        sha, size = digest_path(path)
    artifact = Artifact(
        artifact_id=f"checkpoint:{ref.uri}",
        type="checkpoint",
        uri=ref.uri,
        sha256=sha,
        size_bytes=size,
        created_at=datetime.now(UTC),
        metadata={"name": f"state-step-{saved.step}", "step": saved.step, "kind": ref.kind},
    )
    add_artifact(run_dir, artifact, path=path if path is not None and path.exists() else None)
    update_manifest(
        run_dir,
        last_checkpoint=to_builtins(ref),
        checkpoints=[to_builtins(c) for c in state.checkpoints],
    )


def _retire_checkpoint(run_dir: Path, saved: SavedCheckpoint) -> None:
    """Unlist a checkpoint the policy no longer keeps, then delete its files (file backends).

    The record goes first: a crash in between leaves files nobody lists (harmless,
    overwritten by the next save of that step), never a manifest listing missing files.
    A checkpoint something pins (:mod:`crucible_core.runtime.pins`, e.g. a registered
    model version) keeps its files and its manifest entry: it only leaves the loop state.
    """
    from crucible_core.runtime import pins

    manifest = read_manifest(run_dir)
    listed = cast(list[dict[str, Any]], manifest.get("artifacts") or [])
    if any(a.get("uri") == saved.ref.uri and pins.is_pinned(a.get("sha256")) for a in listed):
        log.info("checkpoint of step %s is pinned: its files are kept", saved.step)
        return
    kept = [
        a
        for a in cast(list[dict[str, Any]], manifest.get("artifacts") or [])
        if a.get("uri") != saved.ref.uri
    ]
    update_manifest(run_dir, artifacts=kept)
    path = uri_path(saved.ref.uri)
    if path is not None and path.exists():
        shutil.rmtree(path, ignore_errors=True)
        parent = path.parent
        if parent.name.startswith("step-") and parent.exists() and not any(parent.iterdir()):
            parent.rmdir()
    with contextlib.suppress(FileNotFoundError):
        _state_path(run_dir, saved.step).unlink()


def _fall_back(run_dir: Path, given: LoopState, chosen: LoopState) -> None:
    """Make ``chosen`` the run's newest state; unlist and delete the failing later checkpoints.

    The state is rewritten first, so an interruption before the next checkpoint
    resumes from ``chosen`` again instead of the discarded one.
    """
    write_json(run_dir / STATE_FILE, chosen)
    update_manifest(
        run_dir,
        resumed_from_step=chosen.step,
        last_checkpoint=to_builtins(chosen.checkpoints[-1].ref),
        checkpoints=[to_builtins(c) for c in chosen.checkpoints],
    )
    for c in given.checkpoints:
        if c.step > chosen.step:
            _retire_checkpoint(run_dir, c)


def _clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove the temporary files a killed process left behind (its own run, lock held)."""
    removed: list[Path] = []
    for folder in (run_dir, run_dir / STATES_DIR):
        if not folder.is_dir():
            continue
        for f in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f)
    return removed


def _checkpoint_problem(run_dir: Path, saved: SavedCheckpoint) -> str | None:
    """Why the checkpoint fails its sha256 check (None: it matches, or is remote/unlisted)."""
    report = verify_run(run_dir, uri=saved.ref.uri)
    local = uri_path(saved.ref.uri)
    if not (report.checked or report.missing or report.altered) and local is not None:
        # Unlisted (a run from before hashes were recorded): it must at least exist.
        return None if local.exists() else f"step {saved.step}: {local} MISSING"
    if report.ok:
        return None
    bad = [*report.missing, *(a.path for a in report.altered)]
    return f"step {saved.step}: " + ", ".join(
        f"{p} {'MISSING' if p in report.missing else 'ALTERED'}" for p in bad[:4]
    )


def verified_resume(run_dir: Path, resume: LoopState) -> tuple[LoopState, list[str]]:
    """The state to resume from: ``resume`` if its newest checkpoint verifies, else fallback.

    Every candidate is checked against the sha256 the manifest recorded for it
    before anything loads it. A corrupted newest checkpoint gives way to the
    newest earlier one that verifies (its loop state is in ``states/``);
    returns ``(state, problems)``, problems naming what failed. None verifying
    raises :class:`~crucible_core.errors.IntegrityError`.
    """
    problems: list[str] = []
    for c in reversed(resume.checkpoints):
        problem = _checkpoint_problem(run_dir, c)
        if problem is not None:
            problems.append(problem)
            continue
        if c is resume.checkpoints[-1]:
            return resume, problems
        try:
            state = msgspec.json.decode(_state_path(run_dir, c.step).read_bytes(), type=LoopState)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            problems.append(f"step {c.step}: its loop state ({STATES_DIR}/) is unreadable")
            continue
        earlier = [k for k in resume.checkpoints if k.step <= c.step]
        state.checkpoints = [k for k in state.checkpoints if k in earlier] or [c]
        return state, problems
    raise IntegrityError(
        f"{run_dir}: no checkpoint of the run passes its sha256 check ({'; '.join(problems)})",
        hint=f"`crucible artifacts verify {run_dir.name}` lists the damage; start the run "
        "again with `crucible train`",
        problems=problems,
    )


class TrainLoopStage:
    """``train.loop``: create the session (or resume it) and run :func:`trainloop.train`.

    Options: ``window`` (steps in flight, default 2), ``resume`` (a
    :class:`LoopState` as plain data: continue from its newest checkpoint).
    """

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        job = training_job_of(ctx)
        data = ctx.inputs.get("tokenize")
        if data is None:
            raise ConfigError("train.loop needs the outputs of data.tokenize (stage 'tokenize')")
        train_data = cast(list[Datum], data["train"])
        validation = cast(list[Datum], data.get("validation") or [])
        backend = ctx.backend()
        caps = backend.capabilities()
        deadline = _deadline()
        session = cast(TrainingSession, backend.create_session(job))
        tokenizer = session.tokenizer
        update_manifest(
            ctx.run_dir,
            tokenizer={
                "name": tokenizer.name,
                "vocab_size": tokenizer.vocab_size,
                "revision": job.model_spec.revision,
            },
            capabilities={"backend_id": caps.backend_id, "provider": caps.provider},
        )
        resume: LoopState | None = None
        raw = ctx.options.get("resume")
        if raw is not None:
            resume = convert(raw, LoopState)
            if not resume.checkpoints:
                raise ConfigError("the resume state lists no checkpoint to load")
            newest = resume.checkpoints[-1].step
            given = resume
            resume, problems = verified_resume(ctx.run_dir, resume)
            if problems:
                message = (
                    f"checkpoint of step {newest} failed its sha256 check "
                    f"({'; '.join(problems)}); resuming from step {resume.step} instead "
                    "(the failing checkpoints are discarded)"
                )
                log.warning("%s", message)
                ctx.emit("train.warning", step=resume.step, message=message)
                _fall_back(ctx.run_dir, given, resume)
            ref = resume.checkpoints[-1].ref
            ctx.emit("train.resume", step=resume.step, uri=ref.uri)
            session.load_state(ref).result(timeout=deadline)
        run_dir = ctx.run_dir

        def emit(event: str, /, **fields: Any) -> None:
            ctx.emit(event, **fields)

        try:
            before = (
                sampled_eval.score_stage(ctx, session, job, when="before", deadline_s=deadline)
                if resume is None
                else None
            )
            result: LoopResult = trainloop.train(
                session,
                job,
                train_data,
                validation_data=validation,
                emit=emit,
                cancel=ctx.cancel,
                resume=resume,
                on_checkpoint=lambda saved, state: _record_checkpoint(run_dir, saved, state),
                on_delete=lambda saved: _retire_checkpoint(run_dir, saved),
                costs=caps.costs,
                backend_name=job.backend_ref.name,
                window=int(self.options.get("window", 2)),
                deadline_s=deadline,
            )
        except BaseException:
            session.close()
            raise
        return {
            "session": session,
            "result": result,
            "initial_loss": result.state.first_loss,
            "final_loss": result.state.last_loss,
            "steps": result.state.step,
            "total_steps": result.total_steps,
            "tokens": result.state.tokens,
            "cost": result.state.cost,
            "elapsed_s": result.state.elapsed_s,
            "stopped": result.stopped,
            "sampled_before": before,
        }


def _session(ctx: StageContext) -> TrainingSession:
    train = ctx.inputs.get("train")
    if train is None:
        raise ConfigError(f"stage needs the outputs of train.loop (job {ctx.job_id})")
    return cast(TrainingSession, train["session"])


class EvaluateStage:
    """``train.evaluate``: the trained weights' loss on the validation split (or a train sample).

    Metrics scored on samples (``validation_spec.metrics``, see
    :mod:`crucible_core.runtime.sampled_eval`) are added under ``sampled``,
    beside the score ``train.loop`` measured before the first step.
    """

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        job = training_job_of(ctx)
        session = _session(ctx)
        tokenized = ctx.inputs.get("tokenize") or {}
        data = cast(list[Datum], tokenized.get("validation") or [])
        split = "validation"
        if not data:
            data = cast(list[Datum], tokenized.get("train") or [])[:64]
            split = "train_sample"
        if not data:
            return {}
        limit = job.validation_spec.max_samples if job.validation_spec else None
        data = data[:limit] if limit else data
        result = session.forward(data, job.learning_config.loss).result(timeout=_deadline())
        metrics = {"eval_loss": result.loss, "perplexity": math.exp(min(result.loss, 50.0))}
        ctx.emit("eval.metric", step=session.step, split=split, loss=result.loss, metrics=metrics)
        out: dict[str, Any] = {"split": split, "examples": len(data), **metrics}
        after = sampled_eval.score_stage(ctx, session, job, when="after", deadline_s=_deadline())
        if after is not None:
            before = (ctx.inputs.get("train") or {}).get("sampled_before")
            out["sampled"] = {"before": before, "after": after}
        return out


class SaveStage:
    """``train.save``: the final weights for sampling, stored by content and linked in lineage."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        job = training_job_of(ctx)
        session = _session(ctx)
        sampler = session.save_weights_for_sampler("final").result(timeout=_deadline())
        ref = sampler.checkpoint
        if ref is None:
            raise ConfigError("the backend's sampler exposes no checkpoint reference")
        out: dict[str, Any] = {"sampler_checkpoint": to_builtins(ref)}
        path = uri_path(ref.uri)
        kind = "model" if isinstance(job.adapter_config, Full) else "adapter"
        edges: list[Edge] = []
        if path is not None and path.exists():
            artifact = ctx.artifacts.put(
                path, type=kind, name="final", metadata={"step": session.step}
            )
            out["artifact_id"] = artifact.artifact_id
            node = artifact.artifact_id
        else:
            node = f"checkpoint:{ref.uri}"
        edges.append(Edge(src=node, dst=f"model:{job.model_spec.name}", kind="derived_from"))
        result = cast(LoopResult, ctx.inputs["train"]["result"])
        if result.last is not None:
            edges.append(
                Edge(src=node, dst=f"checkpoint:{result.last.ref.uri}", kind="derived_from")
            )
        _add_edges(edges)
        ctx.emit("train.checkpoint", step=session.step, uri=ref.uri, checkpoint_kind="sampler")
        update_manifest(ctx.run_dir, sampler_checkpoint=to_builtins(ref))
        return out


def _add_edges(edges: list[Edge]) -> None:
    from crucible_core.runtime.lineage import LineageRecorder

    with LineageRecorder() as recorder:
        recorder.add_edges(edges)


class LogMetricsStage:
    """``train.log_metrics``: write metrics.json and the manifest's record; close the session."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        train = cast(Mapping[str, Any], ctx.inputs.get("train") or {})
        evaluation = dict(ctx.inputs.get("evaluate") or {})
        result = cast(LoopResult | None, train.get("result"))
        summary: dict[str, Any] = {
            "initial_loss": train.get("initial_loss"),
            "final_loss": train.get("final_loss"),
            "steps": train.get("steps"),
            "total_steps": train.get("total_steps"),
            "tokens": train.get("tokens"),
            "cost": train.get("cost"),
            "elapsed_s": train.get("elapsed_s"),
            "stopped": train.get("stopped"),
            "evaluation": evaluation,
        }
        metrics_path = ctx.run_dir / "metrics.json"
        write_json(
            metrics_path,
            {**summary, "losses": result.losses if result is not None else []},
        )
        ctx.artifacts.put(metrics_path, type="metrics", name="metrics")
        update_manifest(ctx.run_dir, training=summary)
        session = train.get("session")
        if session is not None:
            cast(TrainingSession, session).close()
        return summary


class TrainingOutcome(msgspec.Struct, kw_only=True):
    """What :func:`run_training` returns."""

    job_id: str
    run_dir: str
    initial_loss: float | None
    final_loss: float | None
    steps: int
    total_steps: int
    tokens: int
    cost: float
    elapsed_s: float
    stopped: str | None = None
    evaluation: dict[str, Any] = {}
    sampler_checkpoint: CheckpointRef | None = None


def _versions() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in ("torch", "transformers", "peft", "tokenizers", "tinker", "msgspec", "pluggy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


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
) -> TrainingOutcome:
    """Run ``job`` end to end as run ``job_id`` (default: ``job.job_id`` or a new id).

    ``resume`` continues the run from its newest checkpoint (see
    :func:`read_loop_state`). ``plan`` (the plan's estimate) is recorded in
    the manifest beside the actuals.
    """
    run_id = job_id or job.job_id or new_job_id()
    job = msgspec.structs.replace(job, job_id=run_id)
    work = Job(
        id=run_id,
        kind="training_run",
        payload=to_builtins(job),
        created_at=datetime.now(UTC),
    )
    return _run(
        work, job, host=host, bus=bus, cancel=cancel, resume=resume, window=window, plan=plan
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
    lock: RunLock | None = None,
) -> TrainingOutcome:
    """Run ``job`` as ``work`` in its run directory, owning it (``lock``, if the caller
    already holds it, else taken here) for the whole run."""
    experiment = training_experiment(job, work.id)
    options: dict[str, Any] = {"window": window}
    if resume is not None:
        options["resume"] = to_builtins(resume)
    experiment = msgspec.structs.replace(
        experiment,
        stages=[
            msgspec.structs.replace(s, options=options) if s.uses == "train.loop" else s
            for s in experiment.stages
        ],
        seeds=[job.learning_config.seed],
    )
    run_dir = paths.run_dir(work.id)
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if lock is None:
            lock = stack.enter_context(RunLock(run_dir))
        _clean_leftovers(run_dir)
        LocalArtifactStore().clean_staging()
        return _run_locked(
            work,
            job,
            experiment,
            run_dir,
            lock.owner(),
            host=host,
            bus=bus,
            cancel=cancel,
            resume=resume,
            plan=plan,
        )


def _run_locked(
    work: Job,
    job: TrainingJob,
    experiment: Experiment,
    run_dir: Path,
    owner: dict[str, Any],
    *,
    host: Any,
    bus: Any,
    cancel: CancelToken | None,
    resume: LoopState | None,
    plan: Mapping[str, Any] | None,
) -> TrainingOutcome:
    from crucible_core.runtime.pipeline import run_pipeline

    update_manifest(
        run_dir,
        owner=owner,
        training_job=to_builtins(job),
        job_config_digest=config_digest(job),
        backend=to_builtins(job.backend_ref),
        model=to_builtins(job.model_spec),
        seed=job.learning_config.seed,
        versions=_versions(),
        **({"plan": dict(plan)} if plan is not None else {}),
        **({"resumed_from_step": resume.step} if resume is not None else {}),
    )
    start = time.monotonic()
    outputs = run_pipeline(experiment, work, host=host, bus=bus, cancel=cancel)
    tokenized = outputs.get("tokenize") or {}
    loaded = outputs.get("load") or {}
    update_manifest(
        run_dir,
        dataset={
            "uri": job.dataset_spec.uri,
            "hash": loaded.get("dataset_hash"),
            "rows": len(cast(list[Any], loaded.get("rows") or [])),
            "skipped": loaded.get("skipped", 0),
        },
        template={"name": tokenized.get("template"), "hash": tokenized.get("template_hash")},
        wall_time_s=round(time.monotonic() - start, 3),
    )
    summary = cast(Mapping[str, Any], outputs.get("log_metrics") or {})
    saved = cast(Mapping[str, Any], outputs.get("save") or {})
    ref = saved.get("sampler_checkpoint")
    return TrainingOutcome(
        job_id=work.id,
        run_dir=str(run_dir),
        initial_loss=summary.get("initial_loss"),
        final_loss=summary.get("final_loss"),
        steps=int(summary.get("steps") or 0),
        total_steps=int(summary.get("total_steps") or 0),
        tokens=int(summary.get("tokens") or 0),
        cost=float(summary.get("cost") or 0.0),
        elapsed_s=float(summary.get("elapsed_s") or 0.0),
        stopped=summary.get("stopped"),
        evaluation=dict(cast(Mapping[str, Any], summary.get("evaluation") or {})),
        sampler_checkpoint=convert(ref, CheckpointRef) if ref is not None else None,
    )


def run_training_job(job: Job, ctx: Any) -> Mapping[str, Any]:
    """Worker handler for ``training_run`` jobs: run (or resume) the job's TrainingJob.

    A job reclaimed after its worker died resumes from the newest checkpoint
    its run directory holds (``trainer_state.json``), so no finished step is
    lost and none is applied twice. Each state checkpoint is also recorded
    with the scheduler (``ctx.record_checkpoint``), so ``crucible jobs show``
    names the checkpoint a recovery will start from.
    """
    training = convert(job.payload, TrainingJob)
    training = msgspec.structs.replace(training, job_id=job.id)
    # Own the run before reading its saved state: a retry started while a hung
    # attempt still runs must not read (or write) what that attempt is writing.
    with RunLock(paths.run_dir(job.id)) as lock:
        return _run_job(job, training, ctx, lock)


def _run_job(job: Job, training: TrainingJob, ctx: Any, lock: RunLock) -> Mapping[str, Any]:
    resume: LoopState | None = None
    try:
        resume = read_loop_state(paths.run_dir(job.id))
    except NotFound:
        resume = None
    bus = getattr(ctx, "bus", None)
    scheduler = getattr(ctx, "scheduler", None)
    sub: Any = None
    if bus is not None and scheduler is not None:

        def remember(event: Any) -> None:
            data = cast(Mapping[str, Any], event.data)
            if (
                event.kind == "train.checkpoint"
                and event.job_id == job.id
                and data.get("checkpoint_kind") == "state"
            ):
                ref = CheckpointRef(uri=str(data["uri"]), kind="state", step=event.step or 0)
                scheduler.record_checkpoint(job.id, ref)

        sub = bus.subscribe(remember, name=f"checkpoints:{job.id}")
    try:
        outcome = _run(
            job,
            training,
            host=getattr(ctx, "host", None),
            bus=bus,
            cancel=getattr(ctx, "cancel", None),
            resume=resume,
            window=2,
            plan=None,
            lock=lock,
        )
    finally:
        if sub is not None and bus is not None:
            bus.unsubscribe(sub)
    return cast(dict[str, Any], to_builtins(outcome))

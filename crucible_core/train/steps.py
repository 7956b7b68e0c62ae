"""The steps of a training recipe, each a function of typed values.

A recipe (:mod:`crucible_core.train.sft`, and its siblings for other
workflows) calls them in order inside a
:class:`~crucible_core.pipeline.scope.RunScope`; the stage adapters of
:mod:`crucible_core.train.stages` call the same functions, so an Experiment
can wire them into its own graph without a second copy of any rule.

- :func:`manifest_start`, :func:`record_data`: what the run is and read.
- :func:`train_step`: restore a verified checkpoint (or score the base), then
  the loop (:mod:`crucible_core.train.loop`); returns :class:`Trained`.
- :func:`evaluate`: held-out loss and sampled metrics.
- :func:`save_final`: the final sampler weights, stored and linked in lineage.
- :func:`write_metrics`: ``metrics.json`` and the manifest's training summary.
- :func:`export_final`: when ``checkpoint_policy.format`` is an export format
  (gguf, onnx) or ``push_to_hub`` is set, the final weights exported to
  ``<run>/exports/<format>`` (and uploaded to ``hub_repo``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from crucible_core.contracts import StageContext, TrainingSession
from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir.backend import Capabilities, CheckpointRef
from crucible_core.ir.experiment import StageDef
from crucible_core.ir.lineage import Edge, EdgeKind
from crucible_core.ir.training import Full, TrainingJob
from crucible_core.pipeline.scope import RunScope
from crucible_core.records.artifacts import config_digest, uri_path, write_json
from crucible_core.records.manifest import DatasetRecord, RunRecord, TrainingSummary
from crucible_core.train import loop as trainloop
from crucible_core.train import sampled_eval
from crucible_core.train import state as disk
from crucible_core.train.loop import LoopResult, LoopState
from crucible_core.train.prepare import PreparedData, prepare

__all__ = [
    "Trained",
    "TrainingOutcome",
    "call_deadline",
    "evaluate",
    "export_final",
    "final_export_format",
    "finish",
    "manifest_start",
    "prepare_step",
    "record_data",
    "record_session",
    "restore",
    "save_final",
    "train_step",
    "write_metrics",
]

log = logging.getLogger(__name__)

#: The lineage relation a workflow's final weights have to the base model, beside
#: ``derived_from``.
_WORKFLOW_EDGES: dict[str, EdgeKind] = {"rl": "rl_from"}


class Trained(msgspec.Struct, kw_only=True):
    """What the loop step hands on: the loop's result and the score before training."""

    result: LoopResult
    sampled_before: dict[str, Any] | None = None


class TrainingOutcome(msgspec.Struct, kw_only=True):
    """What :func:`run_sft` (and :func:`crucible_core.train.run.run_training`) returns."""

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


def record_data(record: RunRecord, job: TrainingJob, data: PreparedData) -> None:
    """List the dataset (content hash, rows) and chat template in the manifest."""
    current = record.read().dataset
    record.update(
        dataset=DatasetRecord(
            uri=job.dataset_spec.uri,
            hash=data.dataset_hash,
            file_sha256=current.file_sha256 if current is not None else None,
            rows=data.rows,
            skipped=data.skipped,
        ),
        template={"name": data.template, "hash": data.template_hash},
    )


def call_deadline() -> float:
    """How long one backend call may take (``CRUCIBLE_CALL_DEADLINE_S``, else the default)."""
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


def record_session(
    run_dir: Path, session: TrainingSession, job: TrainingJob, caps: Capabilities
) -> None:
    """Record in the manifest the tokenizer and backend the run trains with."""
    tokenizer = session.tokenizer
    RunRecord(run_dir).update(
        tokenizer={
            "name": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "revision": job.model_spec.revision,
        },
        capabilities={"backend_id": caps.backend_id, "provider": caps.provider},
    )


def train_step(
    ctx: StageContext,
    session: TrainingSession,
    job: TrainingJob,
    data: PreparedData,
    caps: Capabilities,
    resume: LoopState | None,
    window: int,
) -> Trained:
    """Restore ``resume`` (verified) or score the base, then run the loop."""
    run_dir = ctx.run_dir
    deadline = call_deadline()
    record_session(run_dir, session, job, caps)
    before = None
    if resume is not None:
        resume = restore(ctx, session, resume, deadline)
    else:
        before = sampled_eval.score(
            ctx, session, job, data.validation_prompts, when="before", deadline_s=deadline
        )
    result = trainloop.train(
        session,
        job,
        data.train,
        validation_data=data.validation,
        emit=ctx.emit,
        cancel=ctx.cancel,
        resume=resume,
        on_checkpoint=lambda saved, state: disk.record_checkpoint(run_dir, saved, state),
        on_delete=lambda saved: disk.retire_checkpoint(run_dir, session, saved),
        costs=caps.costs,
        backend_name=job.backend_ref.name,
        window=window,
        deadline_s=deadline,
        group=data.group,
        on_sampled=sampled_eval.score_step(
            ctx, session, job, data.validation_prompts, deadline_s=deadline
        ),
    )
    return Trained(result=result, sampled_before=before)


def restore(
    ctx: StageContext, session: TrainingSession, resume: LoopState, deadline: float
) -> LoopState:
    """Load the newest checkpoint of ``resume`` that passes its sha256 check."""
    if not resume.checkpoints:
        raise ConfigError("the resume state lists no checkpoint to load")
    newest = resume.checkpoints[-1].step
    chosen, problems = disk.verified_resume(ctx.run_dir, resume)
    if problems:
        message = (
            f"checkpoint of step {newest} failed its sha256 check ({'; '.join(problems)}); "
            f"resuming from step {chosen.step} instead (the failing checkpoints are discarded)"
        )
        log.warning("%s", message)
        ctx.emit("train.warning", step=chosen.step, message=message)
        disk.fall_back(ctx.run_dir, session, resume, chosen)
    ref = chosen.checkpoints[-1].ref
    ctx.emit("train.resume", step=chosen.step, uri=ref.uri)
    RunRecord(ctx.run_dir).update(resumed_from_step=chosen.step)
    session.load_state(ref).result(timeout=deadline)
    return chosen


def evaluate(
    ctx: StageContext,
    session: TrainingSession,
    job: TrainingJob,
    data: PreparedData,
    *,
    before: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The trained weights' loss on the validation split (or a train sample; for pairs,
    ``max_samples`` counts pairs, and the loss's metrics are kept), plus the sampled
    metrics of ``validation_spec.metrics`` beside the score before training."""
    held_out, split = data.validation, "validation"
    if not held_out:
        held_out, split = data.train[:64], "train_sample"
    if not held_out:
        return {}
    limit = job.validation_spec.max_samples if job.validation_spec else None
    held_out = held_out[: limit * data.group] if limit else held_out
    result = session.forward(held_out, job.learning_config.loss).result(timeout=call_deadline())
    metrics = {"eval_loss": result.loss}
    if data.group == 1:
        metrics["perplexity"] = math.exp(min(result.loss, 50.0))
    else:  # pairs: the loss's own metrics (DPO: accuracy, margin, ...) say more
        metrics.update({f"eval_{k}": v for k, v in result.metrics.items()})
    ctx.emit("eval.metric", step=session.step, split=split, loss=result.loss, metrics=metrics)
    out: dict[str, Any] = {"split": split, "examples": len(held_out), **metrics}
    try:
        manifest = RunRecord(ctx.run_dir).read()
    except NotFound:
        manifest = None
    kept = manifest.checkpoints if manifest is not None else []
    at_end = kept[-1].ref.uri if kept and kept[-1].step == session.step else None
    after = sampled_eval.score(
        ctx,
        session,
        job,
        data.validation_prompts,
        when="after",
        deadline_s=call_deadline(),
        checkpoint=at_end,
    )
    if after is not None:
        sampled: dict[str, Any] = {"before": before, "after": after}
        points = manifest.sampled_evals if manifest is not None else []
        steps = [{"step": p.step, "scores": p.scores} for p in points if p.when == "step"]
        if steps:  # the scheduled points between the two (every_n_steps)
            sampled["during"] = steps
        out["sampled"] = sampled
    return out


def save_final(
    ctx: StageContext,
    session: TrainingSession,
    job: TrainingJob,
    result: LoopResult,
    *,
    relations: Sequence[tuple[EdgeKind, str]] = (),
) -> CheckpointRef:
    """The final weights for sampling, stored by content and linked in lineage: derived from
    the base model and the last state checkpoint, plus each ``(kind, node)`` of
    ``relations`` (a workflow's own edge, e.g. ``("distilled_from", "model:teacher")``)."""
    sampler = session.save_weights_for_sampler("final").result(timeout=call_deadline())
    ref = sampler.checkpoint
    if ref is None:
        raise ConfigError("the backend's sampler exposes no checkpoint reference")
    path = uri_path(ref.uri)
    kind = "model" if isinstance(job.adapter_config, Full) else "adapter"
    node = f"checkpoint:{ref.uri}"
    if path is not None and path.exists():
        node = ctx.artifacts.put(
            path, type=kind, name="final", metadata={"step": session.step}
        ).artifact_id
    edges = [Edge(src=node, dst=f"model:{job.model_spec.name}", kind="derived_from")]
    relation = _WORKFLOW_EDGES.get(job.workflow)
    if relation is not None:  # what kind of training made it from the base
        edges.append(Edge(src=node, dst=f"model:{job.model_spec.name}", kind=relation))
    if result.last is not None:
        edges.append(Edge(src=node, dst=f"checkpoint:{result.last.ref.uri}", kind="derived_from"))
    edges.extend(Edge(src=node, dst=dst, kind=kind) for kind, dst in relations)
    from crucible_core.records.lineage import LineageRecorder

    with LineageRecorder() as recorder:
        recorder.add_edges(edges)
    ctx.emit("train.checkpoint", step=session.step, uri=ref.uri, checkpoint_kind="sampler")
    RunRecord(ctx.run_dir).update(sampler_checkpoint=ref)
    return ref


def write_metrics(
    ctx: StageContext, result: LoopResult, evaluation: dict[str, Any]
) -> TrainingSummary:
    """``metrics.json`` (the loss curve and evaluation) and the manifest's training record."""
    state = result.state
    summary = TrainingSummary(
        initial_loss=state.first_loss,
        final_loss=state.last_loss,
        steps=state.step,
        total_steps=result.total_steps,
        tokens=state.tokens,
        cost=state.cost,
        elapsed_s=state.elapsed_s,
        stopped=result.stopped,
        evaluation=evaluation,
    )
    path = ctx.run_dir / "metrics.json"
    write_json(path, {**msgspec.to_builtins(summary), "losses": result.losses})
    ctx.artifacts.put(path, type="metrics", name="metrics")
    RunRecord(ctx.run_dir).update(training=summary)
    return summary


def manifest_start(record: RunRecord, job: TrainingJob, owner: dict[str, Any], plan: Any) -> None:
    """What the run is: the job, its digest, backend, model, seed, versions, the plan."""
    record.update(
        owner=owner,
        training_job=job,
        job_config_digest=config_digest(job),
        backend=job.backend_ref,
        model=job.model_spec,
        seed=job.learning_config.seed,
        versions=_versions(),
        **({"plan": dict(plan)} if plan is not None else {}),
    )


def _versions() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in ("torch", "transformers", "peft", "tokenizers", "tinker", "msgspec", "pluggy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def prepare_step(
    scope: RunScope, job: TrainingJob, prepared: PreparedData | None, *, pairs: bool = False
) -> PreparedData:
    """Step ``prepare`` of a recipe: the plan's data (``prepared``), or the data stages run
    now; recorded in the manifest and announced as ``data.prepared`` (with ``pairs`` for
    preference data)."""
    with scope.step("prepare", "train.prepare") as ctx:
        data = prepared
        if data is None:
            data = prepare(
                scope.get_host(), lambda n, u, i: scope.context(StageDef(name=n, uses=u), i)
            )
        record_data(scope.record, job, data)
        ctx.emit(
            "data.prepared",
            rows=data.rows,
            train=len(data.train),
            tokens=data.tokens,
            template=data.template,
            dataset_hash=data.dataset_hash,
            reused=prepared is not None,
            **({"pairs": len(data.train) // 2} if pairs else {}),
        )
    return data


def final_export_format(job: TrainingJob) -> str | None:
    """The format the run exports its final weights in: ``checkpoint_policy.format`` when
    it is an export format (gguf, onnx); else, to ``push_to_hub``, ``peft`` for an
    adapter run and ``merged`` for a full fine-tune; else None (no export)."""
    from crucible_core.export import FINAL_EXPORT_FORMATS

    policy = job.checkpoint_policy
    if policy.format in FINAL_EXPORT_FORMATS:
        return policy.format
    if policy.push_to_hub:
        return "merged" if isinstance(job.adapter_config, Full) else "peft"
    return None


def export_final(scope: RunScope, job: TrainingJob, sampler: CheckpointRef) -> Any:
    """Step ``export`` of a recipe (when :func:`final_export_format` names one): the final
    weights exported by the run's backend to ``<run>/exports/<format>`` (atomically, with
    a model card), recorded in the manifest and, ``exported_from`` the final checkpoint,
    in lineage; then, with ``push_to_hub``, uploaded to ``hub_repo``
    (:func:`crucible_core.hub.push_folder`) and the push recorded with the export.
    Returns the manifest's ExportRecord, or None when there is nothing to do.
    """
    from crucible_core.export import export_checkpoint, exporting

    fmt = final_export_format(job)
    if fmt is None:
        return None
    policy = job.checkpoint_policy
    with scope.step("export", "train.export") as ctx:
        backend = exporting(scope.backend(), job.backend_ref.name, fmt)
        out = ctx.run_dir / "exports" / fmt
        manifest = msgspec.to_builtins(scope.record.read())
        done = export_checkpoint(
            backend, ctx.run_dir, manifest, job.model_spec, sampler, fmt, out, force=True
        )
        record = done.record
        ctx.emit("train.export", format=fmt, path=str(out), artifact_id=record.artifact_id)
        if policy.push_to_hub and policy.hub_repo:
            from crucible_core.hub import push_folder

            pushed = push_folder(
                out, policy.hub_repo, message=f"crucible run {scope.job.id}: {fmt} export"
            )
            record = msgspec.structs.replace(record, hub=pushed)
            scope.record.record_export(record)
            ctx.emit("train.push", repo=pushed.repo, endpoint=pushed.endpoint, commit=pushed.commit)
    return record


def finish(
    scope: RunScope,
    trained: Trained,
    evaluation: dict[str, Any],
    sampler: CheckpointRef,
    started: float,
    job: TrainingJob | None = None,
) -> TrainingOutcome:
    """Step ``log_metrics`` of a recipe, then (given ``job``) step ``export``
    (:func:`export_final`), the run's wall time, and what the caller gets."""
    with scope.step("log_metrics", "train.log_metrics") as ctx:
        summary = write_metrics(ctx, trained.result, evaluation)
    if job is not None:
        export_final(scope, job, sampler)
    scope.record.update(wall_time_s=round(time.monotonic() - started, 3))
    return TrainingOutcome(
        job_id=scope.job.id,
        run_dir=str(scope.run_dir),
        **msgspec.structs.asdict(summary),
        sampler_checkpoint=sampler,
    )

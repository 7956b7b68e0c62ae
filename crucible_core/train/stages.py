"""The recipe's steps as stages, so an Experiment can compose them in its own graph.

``train.loop`` -> (``train.evaluate``, ``train.save``) -> ``train.log_metrics``,
after crucible-datasets' ``data.load`` -> ``data.tokenize``. For a
``workflow = "dpo"`` job ``train.loop`` runs the DPO recipe's reference step
(:func:`crucible_core.train.dpo.with_reference`) before the loop; for a
``workflow = "rl"`` job it runs the RL recipe's loop
(:func:`crucible_core.train.rl.rl_train_step`: sampled, scored batches), and for a
``workflow = "distill"`` job the distillation recipe's teacher step
(:func:`crucible_core.train.distill.with_teacher`). Each adapter turns
its inputs into the recipe's typed values and calls the same step function
:func:`crucible_core.train.run.run_training` runs, so the two paths cannot
drift. ``train.loop`` hands on a :class:`LoopOutput` (the live session and the
loop's result) under ``"loop"``; the session is closed when the run scope
ends, on every path, and by ``train.log_metrics`` when the graph completes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, cast

import msgspec

from crucible_core.contracts import StageContext, TrainingSession
from crucible_core.errors import ConfigError
from crucible_core.ir.codec import convert, to_builtins
from crucible_core.ir.training import TrainingJob
from crucible_core.train import steps
from crucible_core.train.loop import LoopState
from crucible_core.train.prepare import PreparedData

__all__ = ["EvaluateStage", "LogMetricsStage", "LoopOutput", "SaveStage", "TrainLoopStage"]


class LoopOutput(msgspec.Struct, kw_only=True):
    """What ``train.loop`` hands to the stages after it.

    ``job`` and ``data`` are what the loop trained on when they differ from the
    run's (a DPO job: its loss set, the reference logprobs attached).
    """

    session: Any
    trained: steps.Trained
    job: TrainingJob | None = None
    data: PreparedData | None = None


def training_job_of(ctx: StageContext) -> TrainingJob:
    """The run's TrainingJob, with ``job_id`` set to the run's id."""
    payload: Any = ctx.job.payload
    job = payload if isinstance(payload, TrainingJob) else convert(payload, TrainingJob)
    if job.job_id != ctx.job_id:
        job = msgspec.structs.replace(job, job_id=ctx.job_id)
    return job


def _prepared(ctx: StageContext) -> PreparedData:
    tokenized = ctx.inputs.get("tokenize")
    if tokenized is None:
        raise ConfigError(f"stage needs the outputs of data.tokenize (job {ctx.job_id})")
    return PreparedData.from_stage_outputs(ctx.inputs.get("load") or {}, tokenized)


def _loop(ctx: StageContext) -> LoopOutput:
    out = (ctx.inputs.get("train") or {}).get("loop")
    if not isinstance(out, LoopOutput):
        raise ConfigError(f"stage needs the outputs of train.loop (job {ctx.job_id})")
    return out


class TrainLoopStage:
    """``train.loop``: create the session (or resume it) and run the loop.

    Options: ``window`` (steps in flight, default 2), ``resume`` (a
    :class:`LoopState` as plain data: continue from its newest checkpoint).
    """

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        job = training_job_of(ctx)
        raw = ctx.options.get("resume")
        resume = convert(raw, LoopState) if raw is not None else None
        backend = ctx.backend()
        session = cast(TrainingSession, backend.create_session(job, run_dir=ctx.run_dir))
        scope = getattr(ctx, "scope", None)
        if scope is not None:
            scope.resources.callback(session.close)
        try:
            data, trains = _prepared(ctx), session
            if job.workflow == "rl":  # the RL recipe's loop: sampled, scored batches
                from crucible_core.train.rl import rl_job, rl_train_step

                job = rl_job(job)
                trained = rl_train_step(
                    ctx, session, backend, job, data, resume, int(self.options.get("window", 2))
                )
                return {
                    "loop": LoopOutput(session=session, trained=trained, job=job, data=data),
                    "final_loss": trained.result.state.last_loss,
                    "steps": trained.result.state.step,
                }
            if job.workflow == "dpo":  # the DPO recipe's reference step, then its loss
                from crucible_core.train.dpo import dpo_job, with_reference

                trains, data = with_reference(
                    ctx, session, backend, job, data, fresh=resume is None
                )
                job = dpo_job(job)
            elif job.workflow == "distill":  # the distillation recipe's teacher step
                from crucible_core.train.distill import distill_job, with_teacher

                stack = scope.resources if scope is not None else contextlib.ExitStack()
                trains, taught = with_teacher(
                    ctx, stack, scope, session, backend, job, data, fresh=resume is None
                )
                data, job = taught.data, distill_job(job)
            trained = steps.train_step(
                ctx,
                trains,
                job,
                data,
                backend.capabilities(),
                resume,
                int(self.options.get("window", 2)),
            )
        except BaseException:
            session.close()
            raise
        state = trained.result.state
        dpo = job.workflow in ("dpo", "distill")
        return {
            "loop": LoopOutput(
                session=trains,
                trained=trained,
                job=job if dpo else None,
                data=data if dpo else None,
            ),
            "final_loss": state.last_loss,
            "steps": state.step,
        }


class EvaluateStage:
    """``train.evaluate``: :func:`crucible_core.train.steps.evaluate` on the loop's session."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        loop = _loop(ctx)
        before = loop.trained.sampled_before
        job = loop.job or training_job_of(ctx)
        data = loop.data or _prepared(ctx)
        if job.workflow == "rl":
            from crucible_core.train.rewards import resolve_reward
            from crucible_core.train.rl import evaluate_rl

            reward = resolve_reward(job.rl_config.reward, getattr(ctx, "host", None))
            return evaluate_rl(ctx, loop.session, job, data, reward)
        return steps.evaluate(ctx, loop.session, job, data, before=before)


class SaveStage:
    """``train.save``: :func:`crucible_core.train.steps.save_final` on the loop's session."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        loop = _loop(ctx)
        ref = steps.save_final(ctx, loop.session, training_job_of(ctx), loop.trained.result)
        return {"sampler_checkpoint": to_builtins(ref)}


class LogMetricsStage:
    """``train.log_metrics``: metrics.json, the manifest's training record; closes the session."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        loop = _loop(ctx)
        summary = steps.write_metrics(
            ctx, loop.trained.result, dict(ctx.inputs.get("evaluate") or {})
        )
        loop.session.close()
        return cast(dict[str, Any], to_builtins(summary))

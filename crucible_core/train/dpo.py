"""The DPO recipe, sibling of :mod:`crucible_core.train.sft`:
prepare pairs -> session -> reference -> loop -> evaluate -> save.

:func:`run_dpo` runs a ``workflow = "dpo"`` TrainingJob with the steps the
SFT recipe uses (:mod:`crucible_core.train.steps`); what differs is:

- the data are preference pairs (``data.tokenize`` renders them, chosen then
  rejected in a row, :attr:`PreparedData.group` = 2), batched whole;
- the ``reference`` step attaches the frozen reference's log-probabilities to
  every Datum (:mod:`crucible_core.train.reference`: computed once, cached);
- the loss is ``dpo`` with ``dpo.beta``: computed by the backend when its
  capabilities list ``dpo``, else from the session's log-probabilities by
  :class:`~crucible_core.train.preference.LinearizedDPOSession` (needs
  ``importance_sampling`` and logprobs; ``crucible plan`` refuses a backend
  with neither route).

Each ``train.step`` event carries the loss and, in ``metrics``, ``accuracy``
(preference accuracy), ``margin`` (reward margin), ``reward:chosen``,
``reward:rejected``, ``logps:chosen`` and ``logps:rejected``.
"""

from __future__ import annotations

import time

import msgspec

from crucible_core.contracts import StageContext, TrainingBackend, TrainingSession
from crucible_core.errors import ConfigError
from crucible_core.ir.backend import Capabilities
from crucible_core.ir.training import Loss, TrainingJob
from crucible_core.pipeline.scope import RunScope
from crucible_core.train.loop import LoopState
from crucible_core.train.preference import LinearizedDPOSession
from crucible_core.train.prepare import PreparedData
from crucible_core.train.reference import attach, reference_logprobs
from crucible_core.train.sft import open_session
from crucible_core.train.steps import (
    TrainingOutcome,
    call_deadline,
    evaluate,
    finish,
    prepare_step,
    save_final,
    train_step,
)

__all__ = ["STEPS", "dpo_job", "dpo_refusal", "dpo_route", "run_dpo", "with_reference"]

#: The recipe's steps, in order, as (step name, what it runs): each is recorded as a stage.
STEPS: tuple[tuple[str, str], ...] = (
    ("prepare", "data.load + data.tokenize (pairs)"),
    ("reference", "train.reference"),
    ("train", "train.loop"),
    ("evaluate", "train.evaluate"),
    ("save", "train.save"),
    ("log_metrics", "train.log_metrics"),
)


def dpo_route(caps: Capabilities) -> str | None:
    """How a backend runs DPO: ``"backend"`` (it declares the loss), ``"logprobs"``
    (:class:`LinearizedDPOSession`), or None (it cannot)."""
    if "dpo" in caps.losses:
        return "backend"
    if caps.supports_logprobs and "importance_sampling" in caps.losses:
        return "logprobs"
    return None


def dpo_refusal(backend: str, caps: Capabilities) -> str:
    """Why ``backend`` cannot run DPO (when :func:`dpo_route` is None)."""
    return (
        f'backend {backend!r} cannot run workflow = "dpo": it neither computes the dpo loss '
        f"(losses: {', '.join(caps.losses) or 'none'}) nor returns logprobs with the "
        "importance_sampling loss DPO can be computed through"
    )


def dpo_job(job: TrainingJob) -> TrainingJob:
    """``job`` with ``learning_config.loss`` set to the DPO loss of ``job.dpo``."""
    loss = Loss(name="dpo", params={"beta": job.dpo_config.beta})
    learning = msgspec.structs.replace(job.learning_config, loss=loss)
    return msgspec.structs.replace(job, learning_config=learning)


def with_reference(
    ctx: StageContext,
    session: TrainingSession,
    backend: TrainingBackend,
    job: TrainingJob,
    data: PreparedData,
    *,
    fresh: bool,
) -> tuple[TrainingSession, PreparedData]:
    """The reference step: ``data`` with the reference logprobs attached, and the session
    to train with (``session`` itself, or wrapped to compute the loss from logprobs).

    ``fresh``: ``session`` has not been trained or restored, so its weights are the
    base. Emits ``dpo.reference`` (cache key, whether it was cached, the route).
    """
    caps = backend.capabilities()
    route = dpo_route(caps)
    if route is None:
        raise ConfigError(dpo_refusal(job.backend_ref.name, caps))
    computed: list[str] = []
    ref = reference_logprobs(
        job,
        dataset_hash=data.dataset_hash,
        train=data.train,
        validation=data.validation,
        session=session if fresh else None,
        backend=backend,
        deadline_s=call_deadline(),
        on_compute=computed.append,
    )
    data = msgspec.structs.replace(
        data,
        train=attach(data.train, ref.train),
        validation=attach(data.validation, ref.validation),
    )
    ctx.emit(
        "dpo.reference",
        key=ref.key,
        cached=ref.cached,
        reference=job.dpo_config.reference,
        computed_with=computed[0] if computed else None,
        route=route,
        beta=job.dpo_config.beta,
    )
    if route == "logprobs":
        session = LinearizedDPOSession(session, deadline_s=call_deadline())
    return session, data


def run_dpo(
    scope: RunScope,
    job: TrainingJob,
    *,
    prepared: PreparedData | None = None,
    resume: LoopState | None = None,
    window: int = 2,
) -> TrainingOutcome:
    """Train ``job`` (``workflow = "dpo"``) in ``scope``'s run directory."""
    start = time.monotonic()
    # Sessions are opened with the job as written (a backend without the dpo loss may
    # refuse a job naming it); the loop and the evaluation use the DPO loss.
    trainer = dpo_job(job)
    backend: TrainingBackend = scope.backend()
    data = prepare_step(scope, job, prepared, pairs=True)
    with open_session(backend, job, scope) as raw:
        with scope.step("reference", "train.reference") as ctx:
            session, data = with_reference(ctx, raw, backend, job, data, fresh=resume is None)
        with scope.step("train", "train.loop") as ctx:
            caps = backend.capabilities()
            trained = train_step(ctx, session, trainer, data, caps, resume, window)
        with scope.step("evaluate", "train.evaluate") as ctx:
            evaluation = evaluate(ctx, session, trainer, data, before=trained.sampled_before)
        with scope.step("save", "train.save") as ctx:
            sampler = save_final(ctx, session, job, trained.result)
    return finish(scope, trained, evaluation, sampler, start, job)

"""The distillation recipe, sibling of :mod:`crucible_core.train.sft`:
prepare prompts -> session -> teacher -> loop -> evaluate -> save.

:func:`run_distill` runs a ``workflow = "distill"`` TrainingJob with the steps
the SFT recipe uses (:mod:`crucible_core.train.steps`); what differs is:

- the data are the dataset's prompts (``data.tokenize`` renders them with the
  student's template; :attr:`PreparedData.prompts`);
- the ``teacher`` step (:func:`with_teacher`) opens the teacher
  (:mod:`crucible_core.train.teacher`) and, in mode ``"sft"``, has it complete
  every prompt (``distill.sampling``; cached, so a resumed run trains on the
  first attempt's completions) and builds the student's Datums: the prompt,
  then the teacher's completion, weighted 1 on the completion only. In mode
  ``"on_policy"`` the Datums are the prompts and
  :class:`~crucible_core.train.onpolicy.OnPolicyDistillSession` samples the
  student and scores it with the teacher at every step;
- the ``train.step`` events carry, besides the loss, ``agreement`` (the share
  of the teacher's tokens the student gives probability > 1/2, i.e. tokens
  its greedy decoding certainly picks) and ``teacher_kl`` (mode ``"sft"``: the
  Monte Carlo estimate ``mean(log p_teacher - log p_student)`` of KL(teacher ||
  student) on the teacher's samples, when the teacher returned logprobs; mode
  ``"on_policy"``: the reverse KL on the student's samples, which is also the
  reported loss);
- the evaluation adds ``agreement``: the student's greedy completions of the
  held-out prompts (the validation rows', else the first training prompts)
  compared with the teacher's greedy ones (``exact_match``, and
  ``token_match``: the share of the teacher's tokens the student reproduces
  position by position), before training (fresh runs) and after;
- the final weights are linked to the teacher in lineage (``distilled_from``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from crucible_core.contracts import (
    Future,
    StageContext,
    Tokenizer,
    TrainingBackend,
    TrainingSession,
)
from crucible_core.errors import ConfigError
from crucible_core.ir.backend import (
    Datum,
    ForwardBackwardResult,
    LossFnInputs,
    Prompt,
    SamplingParams,
)
from crucible_core.ir.training import Loss, TrainingJob
from crucible_core.pipeline.scope import RunScope
from crucible_core.train.loop import LoopState
from crucible_core.train.prepare import PreparedData
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
from crucible_core.train.teacher import (
    Teacher,
    TeacherHandle,
    TeacherSample,
    open_teacher,
    resolve_teacher,
    teacher_completions,
    teacher_refusal,
)
from crucible_core.train.wrapped import Mapped, WrappedSession

__all__ = [
    "STEPS",
    "DistillSession",
    "TeacherStep",
    "agreement",
    "completion_datum",
    "distill_job",
    "run_distill",
    "student_refusal",
    "token_metrics",
    "with_teacher",
]

#: The recipe's steps, in order, as (step name, what it runs): each is recorded as a stage.
STEPS: tuple[tuple[str, str], ...] = (
    ("prepare", "data.load + data.tokenize (prompts)"),
    ("teacher", "train.teacher"),
    ("train", "train.loop"),
    ("evaluate", "train.evaluate"),
    ("save", "train.save"),
    ("log_metrics", "train.log_metrics"),
)

#: Held-out prompts scored for agreement when the dataset has no validation rows.
AGREEMENT_FALLBACK = 8
_HALF = math.log(0.5)


def distill_job(job: TrainingJob) -> TrainingJob:
    """``job`` with the loss of its mode: cross_entropy (``sft``) or importance_sampling."""
    name = "importance_sampling" if job.distill_config.mode == "on_policy" else "cross_entropy"
    learning = msgspec.structs.replace(job.learning_config, loss=Loss(name=name))
    return msgspec.structs.replace(job, learning_config=learning)


def student_refusal(job: TrainingJob, backend: str, losses: Sequence[str], logprobs: bool) -> str:
    """Why the student's backend cannot run ``job``'s mode, or ``""``."""
    mode = job.distill_config.mode
    if mode == "sft" and "cross_entropy" not in losses:
        return f"backend {backend!r} cannot train the student: it lacks the cross_entropy loss"
    if mode == "on_policy" and ("importance_sampling" not in losses or not logprobs):
        return (
            f'backend {backend!r} cannot train the student with distill.mode = "on_policy": it '
            "needs the importance_sampling loss and logprobs "
            f"(losses: {', '.join(losses) or 'none'}, logprobs: {str(logprobs).lower()})"
        )
    return ""


def completion_datum(
    prompt: Sequence[int],
    completion: Sequence[int],
    teacher_logprobs: Sequence[float] | None,
    max_length: int | None,
) -> Datum | None:
    """The student's Datum for ``prompt`` + ``completion``: next-token targets weighted 1 on
    the completion; the teacher's logprobs of those tokens ride in ``ref_logprobs`` (0 on
    the prompt). Cut to ``max_length`` tokens; None when no completion token is left."""
    seq = [*prompt, *completion]
    weights = [0.0] * len(prompt) + [1.0] * len(completion)
    ref = [0.0] * len(prompt) + (
        list(teacher_logprobs)
        if teacher_logprobs is not None and len(teacher_logprobs) == len(completion)
        else [0.0] * len(completion)
    )
    if max_length is not None:
        seq, weights, ref = seq[:max_length], weights[:max_length], ref[:max_length]
    if len(seq) < 2 or not any(weights[1:]):
        return None
    has_ref = teacher_logprobs is not None and len(teacher_logprobs) == len(completion)
    inputs = LossFnInputs(
        target_tokens=seq[1:], weights=weights[1:], ref_logprobs=ref[1:] if has_ref else None
    )
    return Datum(model_input=seq[:-1], loss_fn_inputs=inputs)


def _completion_tokens(sample: TeacherSample, tokenizer: Tokenizer) -> list[int]:
    """The teacher's tokens, or its text in the student's tokens (another tokenizer: the
    EOS token is added when the teacher stopped on its own)."""
    if sample.tokens:
        return list(sample.tokens)
    tokens = tokenizer.encode(sample.text)
    eos = tokenizer.eos_token_id
    if sample.finish_reason == "stop" and eos is not None:
        tokens.append(eos)
    return tokens


def token_metrics(batch: Sequence[Datum], logprobs: Sequence[Sequence[float]]) -> dict[str, float]:
    """``agreement`` and (when every Datum carries the teacher's logprobs) ``teacher_kl`` of
    the student's target-token ``logprobs`` over the weighted tokens of ``batch``."""
    count = 0.0
    agree = 0.0
    kl = 0.0
    with_ref = all(d.loss_fn_inputs.ref_logprobs is not None for d in batch)
    for datum, row in zip(batch, logprobs, strict=True):
        inputs = datum.loss_fn_inputs
        weights = inputs.weights if inputs.weights is not None else [1.0] * datum.num_tokens
        ref = inputs.ref_logprobs
        for i, (w, lp) in enumerate(zip(weights, row, strict=True)):
            if w == 0:
                continue
            count += 1
            agree += lp > _HALF
            if ref is not None:
                kl += ref[i] - lp
    if not count:
        return {}
    out = {"agreement": agree / count}
    if with_ref:
        out["teacher_kl"] = kl / count
    return out


def _strip(batch: Sequence[Datum]) -> list[Datum]:
    """``batch`` without the teacher's logprobs (the backend's loss does not read them)."""
    out: list[Datum] = []
    for d in batch:
        if d.loss_fn_inputs.ref_logprobs is None:
            out.append(d)
            continue
        inputs = msgspec.structs.replace(d.loss_fn_inputs, ref_logprobs=None)
        out.append(msgspec.structs.replace(d, loss_fn_inputs=inputs))
    return out


class DistillSession(WrappedSession):
    """A :class:`~crucible_core.contracts.TrainingSession` adding the teacher metrics
    (:func:`token_metrics`) to every ``forward``/``forward_backward`` result of mode ``sft``."""

    def _measured(
        self,
        call: Callable[[Sequence[Datum], Loss], Future[ForwardBackwardResult]],
        batch: Sequence[Datum],
        loss: Loss,
    ) -> Future[ForwardBackwardResult]:
        data = list(batch)

        def add(result: ForwardBackwardResult) -> ForwardBackwardResult:
            extra = token_metrics(data, result.logprobs)
            return msgspec.structs.replace(result, metrics={**result.metrics, **extra})

        return Mapped(call(_strip(data), loss), add)

    def forward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        return self._measured(self._inner.forward, batch, loss)

    def forward_backward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        return self._measured(self._inner.forward_backward, batch, loss)


def agreement(
    session: TrainingSession,
    prompts: Sequence[Mapping[str, Any]],
    teacher: Sequence[TeacherSample],
    *,
    max_tokens: int,
    name: str,
    deadline_s: float,
) -> dict[str, float]:
    """The student's greedy completions of ``prompts`` against the teacher's greedy ones
    (``teacher``, same order): ``exact_match`` (same text) and ``token_match`` (the share of
    the teacher's tokens the student reproduces at the same position)."""
    if not prompts:
        return {}
    sampler = session.save_weights_for_sampler(name).result(timeout=deadline_s)
    try:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        futures = [
            sampler.sample(Prompt(tokens=[int(t) for t in p["tokens"]]), params) for p in prompts
        ]
        student = [f.result(timeout=deadline_s)[0] for f in futures]
    finally:
        close = getattr(sampler, "close", None)
        if callable(close):
            close()
        if sampler.checkpoint is not None:
            session.delete_checkpoint(sampler.checkpoint)
    exact = sum(s.text.strip() == t.text.strip() for s, t in zip(student, teacher, strict=True))
    matched = total = 0
    for s, t in zip(student, teacher, strict=True):
        want = t.tokens or session.tokenizer.encode(t.text)
        total += len(want)
        matched += sum(a == b for a, b in zip(s.tokens, want, strict=False))
    return {
        "exact_match": exact / len(prompts),
        "token_match": matched / total if total else 0.0,
        "examples": float(len(prompts)),
    }


class TeacherStep(msgspec.Struct, kw_only=True):
    """What the teacher step hands on: the data to train on, held-out prompts and the
    teacher's greedy answers to them, and the teacher's lineage node."""

    data: PreparedData
    held_out: list[dict[str, Any]]
    teacher_greedy: list[TeacherSample]
    node: str
    split: str


def _teacher_backend(
    scope: RunScope | None, student: Any, teacher: Teacher, job: TrainingJob
) -> Any:
    """The student's backend when the teacher names the same one, else a new instance."""
    mine = job.backend_ref
    if teacher.backend.name == mine.name and dict(teacher.backend.options) == dict(mine.options):
        return student
    if scope is None:
        from crucible_core.plugins import get_host

        return get_host().create("backend", teacher.backend.name, **teacher.backend.options)
    return scope.get_host().create("backend", teacher.backend.name, **teacher.backend.options)


def with_teacher(
    ctx: StageContext,
    stack: contextlib.ExitStack,
    scope: RunScope | None,
    session: TrainingSession,
    backend: TrainingBackend,
    job: TrainingJob,
    data: PreparedData,
    *,
    fresh: bool,
) -> tuple[TrainingSession, TeacherStep]:
    """The teacher step: the session to train with and the data (see the module docstring).

    ``stack`` keeps what must live as long as training (the on-policy teacher, a
    backend created for the teacher). ``fresh``: ``session`` is untrained, so the
    agreement before training is scored. Emits ``distill.teacher``.
    """
    cfg = job.distill_config
    deadline = call_deadline()
    teacher = resolve_teacher(job)
    tbackend = _teacher_backend(scope, backend, teacher, job)
    if tbackend is not backend:
        stack.callback(getattr(tbackend, "close", lambda: None))
    refusal = teacher_refusal(tbackend, teacher.backend.name, teacher, cfg.mode)
    if refusal is not None:
        raise ConfigError(refusal)
    held_out, split = list(data.validation_prompts), "validation"
    if not held_out:
        held_out, split = list(data.prompts[:AGREEMENT_FALLBACK]), "train_sample"
    student_tok = session.tokenizer

    def opened() -> contextlib.AbstractContextManager[TeacherHandle]:
        return open_teacher(teacher, tbackend, deadline_s=deadline)

    completions = teacher_completions(
        opened,
        teacher,
        job,
        dataset_hash=data.dataset_hash,
        prompts=data.prompts if cfg.mode == "sft" else [],
        held_out=held_out,
        student_tokenizer=str(student_tok.name),
        deadline_s=deadline,
    )
    max_length = job.dataset_spec.max_length or job.model_spec.max_seq_len
    trains: TrainingSession
    if cfg.mode == "sft":
        train: list[Datum] = []
        for prompt, samples in zip(data.prompts, completions.train, strict=True):
            for sample in samples:
                tokens = _completion_tokens(sample, student_tok)
                logprobs = sample.logprobs if sample.tokens else None
                datum = completion_datum(prompt["tokens"], tokens, logprobs, max_length)
                if datum is not None:
                    train.append(datum)
        if not train:
            raise ConfigError(
                f"{job.dataset_spec.uri}: the teacher's completions leave no token to train on",
                hint="raise distill.sampling.max_tokens or dataset_spec.max_length",
            )
        validation: list[Datum] = []
        for prompt, sample in zip(held_out, completions.validation, strict=True):
            tokens = _completion_tokens(sample, student_tok)
            datum = completion_datum(prompt["tokens"], tokens, None, max_length)
            if datum is not None and split == "validation":
                validation.append(datum)
        data = msgspec.structs.replace(
            data, train=train, validation=validation, tokens=sum(d.num_tokens for d in train)
        )
        trains = DistillSession(session)
    else:
        from crucible_core.train.onpolicy import OnPolicyDistillSession, prompt_datums

        handle = stack.enter_context(
            open_teacher(teacher, tbackend, deadline_s=deadline, need_logprobs=True)
        )
        if handle.tokenizer_name != str(student_tok.name):
            raise ConfigError(
                'distill.mode = "on_policy": the teacher\'s tokenizer '
                f"({handle.tokenizer_name}) is not the student's ({student_tok.name})",
                hint='use a teacher of the same base model, or distill.mode = "sft"',
            )
        data = msgspec.structs.replace(
            data,
            train=prompt_datums(data.prompts),
            validation=prompt_datums(held_out) if split == "validation" else [],
        )
        trains = OnPolicyDistillSession(
            session,
            handle,
            cfg.sampling,
            seed=job.learning_config.seed,
            max_length=max_length,
            deadline_s=deadline,
        )
    ctx.emit(
        "distill.teacher",
        key=completions.key,
        cached=completions.cached,
        mode=cfg.mode,
        teacher=teacher.node,
        backend=teacher.backend.name,
        prompts=len(data.prompts),
        datums=len(data.train),
        held_out=len(held_out),
    )
    step = TeacherStep(
        data=data,
        held_out=held_out,
        teacher_greedy=completions.validation,
        node=teacher.node,
        split=split,
    )
    return trains, step


def _agreement(
    ctx: StageContext,
    session: TrainingSession,
    job: TrainingJob,
    step: TeacherStep,
    when: str,
) -> dict[str, float]:
    scores = agreement(
        session,
        step.held_out,
        step.teacher_greedy,
        max_tokens=job.distill_config.sampling.max_tokens,
        name=f"agreement-{when}",
        deadline_s=call_deadline(),
    )
    if scores:
        ctx.emit(
            "eval.metric",
            step=session.step,
            split=step.split,
            when=when,
            metrics={f"agreement:{k}": v for k, v in scores.items()},
        )
    return scores


def run_distill(
    scope: RunScope,
    job: TrainingJob,
    *,
    prepared: PreparedData | None = None,
    resume: LoopState | None = None,
    window: int = 2,
) -> TrainingOutcome:
    """Train ``job`` (``workflow = "distill"``) in ``scope``'s run directory."""
    start = time.monotonic()
    trainer = distill_job(job)
    backend: TrainingBackend = scope.backend()
    data = prepare_step(scope, job, prepared)
    with contextlib.ExitStack() as stack, open_session(backend, job, scope) as raw:
        with scope.step("teacher", "train.teacher") as ctx:
            session, taught = with_teacher(
                ctx, stack, scope, raw, backend, job, data, fresh=resume is None
            )
            before = _agreement(ctx, raw, job, taught, "before") if resume is None else None
        with scope.step("train", "train.loop") as ctx:
            caps = backend.capabilities()
            trained = train_step(ctx, session, trainer, taught.data, caps, resume, window)
        with scope.step("evaluate", "train.evaluate") as ctx:
            evaluation = evaluate(ctx, session, trainer, taught.data, before=trained.sampled_before)
            after = _agreement(ctx, raw, job, taught, "after")
            evaluation["agreement"] = {"split": taught.split, "before": before, "after": after}
        with scope.step("save", "train.save") as ctx:
            sampler = save_final(
                ctx, session, job, trained.result, relations=[("distilled_from", taught.node)]
            )
    return finish(scope, trained, evaluation, sampler, start, job)

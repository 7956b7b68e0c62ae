"""On-policy distillation: the student samples, the teacher scores, reverse KL is the advantage.

The loop trains ``distill.mode = "on_policy"`` on Datums that are only prompts
(:func:`prompt_datums`, every weight 0). :class:`OnPolicyDistillSession` turns
each ``forward_backward`` of such a batch into:

1. the student's current weights for sampling (``save_weights_for_sampler``:
   the backend applies calls in order, so these are the weights after every
   step submitted before, i.e. strictly on-policy);
2. ``distill.sampling.n`` completions per prompt, each request seeded from
   ``(seed, step, micro-batch, prompt)`` so a resumed run samples what the
   uninterrupted one did; the sampler's logprobs are the student's;
3. the teacher's log-probabilities of the same tokens (its ``forward``);
4. the ``importance_sampling`` loss on those sequences with, per completion token,
   ``advantage = log p_teacher - log p_student`` (the negative per-token reverse KL):
   its gradient lowers KL(student || teacher) on the student's own samples.

The reported loss is the reverse-KL estimate ``mean(log p_student - log p_teacher)``
over the sampled tokens (also ``teacher_kl``), and ``agreement`` is the share of
the student's tokens the teacher gives probability > 1/2. ``forward`` (evaluation)
does steps 1-3 and reports the same numbers. Budgets count the prompts' tokens.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from crucible_core.contracts import Future, Sampler, TrainingSession
from crucible_core.ir.backend import (
    Datum,
    ForwardBackwardResult,
    LossFnInputs,
    Prompt,
    SamplingParams,
)
from crucible_core.ir.training import Loss
from crucible_core.train.teacher import TeacherHandle
from crucible_core.train.wrapped import Done, Mapped, WrappedSession

__all__ = ["OnPolicyDistillSession", "prompt_datums", "sample_seed"]

_HALF = math.log(0.5)


def prompt_datums(prompts: Sequence[Mapping[str, Any]]) -> list[Datum]:
    """One Datum per prompt: its tokens as ``model_input``, nothing weighted."""
    out: list[Datum] = []
    for p in prompts:
        tokens = [int(t) for t in p["tokens"]]
        inputs = LossFnInputs(target_tokens=[*tokens[1:], 0], weights=[0.0] * len(tokens))
        out.append(Datum(model_input=tokens, loss_fn_inputs=inputs))
    return out


def sample_seed(seed: int, step: int, micro: int, index: int) -> int:
    """The sampling seed of prompt ``index`` of micro-batch ``micro`` of step ``step``."""
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class _Rollout(msgspec.Struct, kw_only=True):
    """The student's samples of one batch, as importance_sampling Datums, and their scores."""

    data: list[Datum]
    kl: float
    agreement: float
    tokens: int


def _report(r: _Rollout) -> Callable[[ForwardBackwardResult], ForwardBackwardResult]:
    """The result of training on rollout ``r``: its reverse KL as the loss, its metrics."""

    def report(result: ForwardBackwardResult) -> ForwardBackwardResult:
        metrics = {**result.metrics, "teacher_kl": r.kl, "agreement": r.agreement}
        metrics["sampled_tokens"] = float(r.tokens)
        return msgspec.structs.replace(result, loss=r.kl, metrics=metrics)

    return report


class OnPolicyDistillSession(WrappedSession):
    """A :class:`~crucible_core.contracts.TrainingSession` running on-policy distillation
    for ``importance_sampling`` calls on prompt Datums (see the module docstring)."""

    def __init__(
        self,
        inner: TrainingSession,
        teacher: TeacherHandle,
        sampling: SamplingParams,
        *,
        seed: int,
        max_length: int | None,
        deadline_s: float,
    ) -> None:
        super().__init__(inner)
        self._teacher = teacher
        self._sampling = sampling
        self._seed = sampling.seed if sampling.seed is not None else seed
        self._max_length = max_length
        self._deadline = deadline_s
        self._last_step = -1
        self._micro = 0

    def _rollout(self, batch: Sequence[Datum], name: str, *, training: bool) -> _Rollout:
        sampler: Sampler = self._inner.save_weights_for_sampler(name).result(timeout=self._deadline)
        # Every call submitted before has been applied: the session's step is this batch's.
        step = self._inner.step
        if training:
            self._micro = self._micro + 1 if step == self._last_step else 0
            self._last_step = step
            micro = self._micro
        else:
            # Evaluation draws from its own seeds: whether (and how often) it runs must not
            # shift the training rollouts' seeds, or a resumed run would sample differently.
            micro = -1
        try:
            futures = [
                sampler.sample(
                    Prompt(tokens=list(d.model_input)),
                    msgspec.structs.replace(
                        self._sampling, seed=sample_seed(self._seed, step, micro, i)
                    ),
                )
                for i, d in enumerate(batch)
            ]
            samples = [f.result(timeout=self._deadline) for f in futures]
        finally:
            close = getattr(sampler, "close", None)
            if callable(close):
                close()
            if sampler.checkpoint is not None:
                self._inner.delete_checkpoint(sampler.checkpoint)
        from crucible_core.train.distill import completion_datum

        seqs: list[Datum] = []
        student: list[list[float]] = []
        for datum, completions in zip(batch, samples, strict=True):
            for c in completions:
                made = completion_datum(list(datum.model_input), c.tokens, None, self._max_length)
                if made is None:
                    continue
                seqs.append(made)
                start = len(datum.model_input) - 1
                lps = list(c.logprobs or [])
                row = [0.0] * made.num_tokens
                for k, lp in enumerate(lps[: made.num_tokens - start]):
                    row[start + k] = lp
                student.append(row)
        if any(not c.logprobs for group in samples for c in group):
            # A sampler without logprobs: the student's own forward pass gives them.
            student = [
                list(r)
                for r in self._inner.forward(seqs, Loss()).result(timeout=self._deadline).logprobs
            ]
        teacher = self._teacher.logprobs(seqs, self._deadline)
        data: list[Datum] = []
        kl = agree = count = 0.0
        for datum, s_row, t_row in zip(seqs, student, teacher, strict=True):
            weights = datum.loss_fn_inputs.weights or []
            adv = [(t - s) if w else 0.0 for w, s, t in zip(weights, s_row, t_row, strict=True)]
            for w, s, t in zip(weights, s_row, t_row, strict=True):
                if w:
                    count += 1
                    kl += s - t
                    agree += t > _HALF
            inputs = msgspec.structs.replace(datum.loss_fn_inputs, logprobs=s_row, advantages=adv)
            data.append(msgspec.structs.replace(datum, loss_fn_inputs=inputs))
        count = count or 1.0
        return _Rollout(data=data, kl=kl / count, agreement=agree / count, tokens=int(count))

    def forward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        if loss.name != "importance_sampling":
            return self._inner.forward(batch, loss)
        r = self._rollout(batch, "policy-eval", training=False)
        metrics = {"teacher_kl": r.kl, "agreement": r.agreement, "sampled_tokens": float(r.tokens)}
        return Done(ForwardBackwardResult(loss=r.kl, metrics=metrics, num_tokens=r.tokens))

    def forward_backward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        if loss.name != "importance_sampling":
            return self._inner.forward_backward(batch, loss)
        r = self._rollout(batch, "policy", training=True)
        if not r.data:
            return Done(ForwardBackwardResult(loss=0.0))
        return Mapped(self._inner.forward_backward(r.data, loss), _report(r))

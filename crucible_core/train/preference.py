"""The DPO loss from per-token log-probabilities, for backends that do not compute it.

A backend that declares the ``dpo`` loss computes it itself (crucible-local's
``losses.py``). Any other training backend that returns target-token
log-probabilities from ``forward`` and computes the ``importance_sampling``
loss runs DPO through :class:`LinearizedDPOSession`, the client-side custom
loss of Tinker's ``forward_backward_custom``:

1. ``forward`` the batch (no gradient) for the policy's log-probabilities;
2. compute the DPO loss and its gradient ``g`` with respect to each token's
   log-probability, in closed form (:func:`dpo_terms`);
3. ``forward_backward`` a surrogate whose gradient is ``g``: the
   ``importance_sampling`` loss ``-sum(w * exp(lp - lp_fwd) * A) / W`` with
   ``w = 1`` on the pair's weighted tokens, ``lp_fwd`` the log-probabilities
   of step 1 and ``A = -g * W``. At ``lp = lp_fwd`` its gradient is exactly
   ``g``; where the backend's training pass differs from its forward pass
   (dropout) it is ``g * exp(lp - lp_fwd)``, close to ``g``.

The reported loss and metrics are DPO's (step 2), not the surrogate's. The
cost is one extra forward pass per micro-batch.

Batches are pairs at positions ``(2i, 2i + 1)``: chosen, then rejected, each
Datum carrying ``loss_fn_inputs.ref_logprobs`` and ``weights`` (1 on the
completion tokens). With ``s = sum(w * lp)`` a sequence's log-probability and
``s_ref`` the reference's::

    m_i = beta * ((s_c - s_c_ref) - (s_r - s_r_ref))
    loss = mean_i softplus(-m_i)

the rule of crucible-local's ``dpo`` loss, so both routes train alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec

from crucible_core.contracts import Future, TrainingSession
from crucible_core.errors import ConfigError
from crucible_core.ir.backend import (
    Datum,
    ForwardBackwardResult,
)
from crucible_core.ir.training import Loss
from crucible_core.train.wrapped import Mapped, WrappedSession

__all__ = ["DPOTerms", "LinearizedDPOSession", "dpo_terms"]


class DPOTerms(msgspec.Struct, kw_only=True):
    """The DPO loss of a batch of pairs, its metrics, and d(loss)/d(logprob) per token."""

    loss: float
    metrics: dict[str, float]
    grads: list[list[float]]


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def dpo_terms(batch: Sequence[Datum], logprobs: Sequence[Sequence[float]], beta: float) -> DPOTerms:
    """DPO over ``batch`` (pairs in a row) given the policy's per-token ``logprobs``."""
    if len(batch) % 2 or not batch:
        raise ConfigError(
            f"batch: the dpo loss takes (chosen, rejected) pairs; got {len(batch)} datums"
        )
    seq: list[float] = []
    ref: list[float] = []
    weights: list[list[float]] = []
    for i, datum in enumerate(batch):
        inputs = datum.loss_fn_inputs
        if inputs.ref_logprobs is None:
            raise ConfigError(f"batch[{i}].loss_fn_inputs.ref_logprobs is missing; dpo needs it")
        w = inputs.weights if inputs.weights is not None else [1.0] * datum.num_tokens
        lp = logprobs[i]
        weights.append(list(w))
        seq.append(sum(a * b for a, b in zip(w, lp, strict=True)))
        ref.append(sum(a * b for a, b in zip(w, inputs.ref_logprobs, strict=True)))
    pairs = len(batch) // 2
    losses: list[float] = []
    margins: list[float] = []
    grads: list[list[float]] = []
    for p in range(pairs):
        c, r = 2 * p, 2 * p + 1
        chosen, rejected = seq[c] - ref[c], seq[r] - ref[r]
        margin = beta * (chosen - rejected)
        margins.append(margin)
        losses.append(_softplus(-margin))
        # d softplus(-m)/dm = -sigmoid(-m); dm/dlp = +-beta * w; the loss is a mean over pairs.
        scale = -_sigmoid(-margin) * beta / pairs
        grads.append([scale * w for w in weights[c]])
        grads.append([-scale * w for w in weights[r]])
    chosen_r = [beta * (seq[2 * p] - ref[2 * p]) for p in range(pairs)]
    rejected_r = [beta * (seq[2 * p + 1] - ref[2 * p + 1]) for p in range(pairs)]
    metrics = {
        "loss:sum": sum(losses),
        "accuracy": sum(m > 0 for m in margins) / pairs,
        "margin": sum(margins) / pairs,
        "reward:chosen": sum(chosen_r) / pairs,
        "reward:rejected": sum(rejected_r) / pairs,
        "logps:chosen": sum(seq[0::2]) / pairs,
        "logps:rejected": sum(seq[1::2]) / pairs,
        "pairs": float(pairs),
    }
    return DPOTerms(loss=sum(losses) / pairs, metrics=metrics, grads=grads)


def _surrogate(
    batch: Sequence[Datum], logprobs: Sequence[Sequence[float]], terms: DPOTerms
) -> list[Datum]:
    """The importance_sampling batch whose gradient at ``logprobs`` is ``terms.grads``."""
    masks = [[1.0 if w != 0 else 0.0 for w in g] for g in terms.grads]
    # Tokens with a zero DPO weight are masked out, so W counts the weighted tokens.
    count = sum(sum(m) for m in masks) or 1.0
    out: list[Datum] = []
    for datum, lp, grad, mask in zip(batch, logprobs, terms.grads, masks, strict=True):
        inputs = msgspec.structs.replace(
            datum.loss_fn_inputs,
            weights=mask,
            logprobs=list(lp),
            advantages=[-g * count for g in grad],
        )
        out.append(msgspec.structs.replace(datum, loss_fn_inputs=inputs))
    return out


class LinearizedDPOSession(WrappedSession):
    """A :class:`~crucible_core.contracts.TrainingSession` that computes ``dpo`` itself.

    Every call goes to ``inner`` unchanged, except ``forward``/``forward_backward``
    with the ``dpo`` loss, which follow the module's recipe. ``deadline_s``
    bounds the wait for the forward pass that ``forward_backward`` needs first.
    """

    def __init__(self, inner: TrainingSession, *, deadline_s: float) -> None:
        super().__init__(inner)
        self._deadline = deadline_s

    def _beta(self, loss: Loss) -> float:
        value: Any = loss.params.get("beta", 0.1)
        return float(value)

    def forward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        if loss.name != "dpo":
            return self._inner.forward(batch, loss)
        beta = self._beta(loss)
        data = list(batch)

        def score(result: ForwardBackwardResult) -> ForwardBackwardResult:
            terms = dpo_terms(data, result.logprobs, beta)
            return msgspec.structs.replace(result, loss=terms.loss, metrics=terms.metrics)

        return Mapped(self._inner.forward(data, Loss()), score)

    def forward_backward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        if loss.name != "dpo":
            return self._inner.forward_backward(batch, loss)
        data = list(batch)
        policy = self._inner.forward(data, Loss()).result(timeout=self._deadline)
        terms = dpo_terms(data, policy.logprobs, self._beta(loss))
        surrogate = _surrogate(data, policy.logprobs, terms)
        done = self._inner.forward_backward(surrogate, Loss(name="importance_sampling"))

        def report(result: ForwardBackwardResult) -> ForwardBackwardResult:
            return msgspec.structs.replace(result, loss=terms.loss, metrics=terms.metrics)

        return Mapped(done, report)

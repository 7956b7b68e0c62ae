"""Losses over target-token log-probabilities, and the batch tensors they read.

Every loss sees ``logprobs[b, t] = log p(target_tokens[t] | model_input[:t+1])``
for datum ``b`` and weights ``w[b, t]`` (``loss_fn_inputs.weights``, 1 where
absent, 0 on padding). With ``W = sum |w|``:

``cross_entropy``
    ``loss = -sum(w * logprobs) / W``; ``metrics["loss:sum"] = -sum(w * logprobs)``.
``importance_sampling``
    ``ratio = exp(logprobs - loss_fn_inputs.logprobs)`` (the sampler's),
    ``loss = -sum(w * ratio * advantages) / W``.
``ppo``
    ``loss = -sum(w * min(ratio * A, clip(ratio, 1 - low, 1 + high) * A)) / W``
    with ``low``/``high`` from ``params.clip_range`` (default 0.2) or
    ``params.clip_range_low``/``clip_range_high``.
``cispo`` (Tinker's CISPO)
    ``loss = -sum(w * sg(clip(ratio, lo, hi)) * logprobs * A) / W``: the clipped
    ratio, without gradient, weighs the log-probability's gradient.
    ``lo``/``hi`` are ``params.clip_low_threshold``/``clip_high_threshold``,
    bounds on the ratio itself (default 0.8 and 1.2, Tinker's).
``gspo`` (Tinker's GSPO-token)
    Per datum, the sequence log-ratio ``l = mean(logprobs - loss_fn_inputs.logprobs)``
    over the tokens where ``loss_fn_inputs.sequence_ratio_mask != 0`` (without
    gradient); every token's ratio ``s_t = exp(l + logprobs - sg(logprobs))`` has
    the sequence ratio's value and its own log-probability's gradient;
    ``loss = -sum(w * min(s_t * A, clip(s_t, lo, hi) * A)) / W``. ``lo``/``hi``
    (``params.clip_low_threshold``/``clip_high_threshold``) are required: Tinker
    documents no default for them.
``dro`` (Tinker's DRO)
    ``loss = -sum(w * (logprobs * A - beta / 2 * (logprobs - loss_fn_inputs.logprobs)^2)) / W``
    with ``beta = params.beta``, required (Tinker documents no default).
``dpo``
    The batch is pairs ``(chosen, rejected)`` at positions ``(2i, 2i + 1)``.
    A sequence's log-probability is ``sum(w * logprobs)`` (weights mask the
    prompt), its reference one ``sum(w * ref_logprobs)``;
    ``loss = mean_i -log sigmoid(beta * ((c_i - c_ref_i) - (r_i - r_ref_i)))``,
    ``beta = params.beta`` (default 0.1); ``loss:sum`` is the sum over pairs.
    Metrics: ``accuracy`` (share of pairs with ``margin > 0``), ``margin``
    (the mean reward margin), ``reward:chosen``/``reward:rejected``,
    ``logps:chosen``/``logps:rejected`` (mean sequence log-probabilities).
``custom``
    ``fn(data, logprobs, **params) -> (loss, metrics)`` with ``logprobs`` a list
    of one 1-D tensor per datum (autograd attached in ``forward_backward``).

The gradient of ``forward_backward`` is the gradient of ``loss`` as reported.
``metrics["loss:sum"]`` is the unnormalised sum (``loss * W``), which is what
Tinker reports as ``loss:sum`` for the same inputs (its losses ignore weights;
absent weights are 1 here).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crucible_core.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from crucible_core.ir.backend import Datum
    from crucible_core.ir.training import Loss

__all__ = ["LossPlan", "PreparedBatch", "compute_loss", "plan_loss", "prepare_batch"]

#: Accepted ``Loss.params`` of each named loss, with defaults (None: unset).
_PARAMS: dict[str, dict[str, float | None]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_range": 0.2, "clip_range_low": None, "clip_range_high": None},
    "cispo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "gspo": {"clip_low_threshold": None, "clip_high_threshold": None},
    "dro": {"beta": None},
    "dpo": {"beta": 0.1},
}
#: Params that may be 0 (the others must be > 0).
_ZERO_OK: frozenset[tuple[str, str]] = frozenset(
    {("cispo", "clip_low_threshold"), ("gspo", "clip_low_threshold"), ("dro", "beta")}
)
_GSPO_RANGE = (
    "Tinker documents no default clip range for gspo: set params.clip_low_threshold and "
    "params.clip_high_threshold, the bounds of the sequence ratio (e.g. 0.8 and 1.2, the "
    "ppo/cispo defaults)"
)
#: Params a loss cannot run without, and how to fix their absence.
_REQUIRED: dict[str, dict[str, str]] = {
    "gspo": {"clip_low_threshold": _GSPO_RANGE, "clip_high_threshold": _GSPO_RANGE},
    "dro": {
        "beta": "Tinker documents no default beta for dro: set params.beta, the weight of "
        "the quadratic penalty (Tinker's example uses 0.05)"
    },
}
#: Per-datum inputs each loss needs beyond target_tokens.
_NEEDS: dict[str, tuple[str, ...]] = {
    "importance_sampling": ("logprobs", "advantages"),
    "ppo": ("logprobs", "advantages"),
    "cispo": ("logprobs", "advantages"),
    "gspo": ("logprobs", "advantages", "sequence_ratio_mask"),
    "dro": ("logprobs", "advantages"),
    "dpo": ("ref_logprobs",),
}


@dataclass(frozen=True)
class LossPlan:
    """A validated loss: its name, numeric parameters, and the custom function if any."""

    name: str
    params: dict[str, Any]
    fn: Callable[..., Any] | None = None
    needs: tuple[str, ...] = ()


def _import_fn(ref: str) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"learning_config.loss.fn: cannot import module {module_name!r} of {ref!r}: {exc}",
            hint="the module must be importable where training runs (installed or on sys.path)",
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"learning_config.loss.fn: module {module_name!r} has no attribute {attr!r}",
                hint="write it as 'package.module:function'",
            ) from None
    if not callable(obj):
        raise ConfigError(f"learning_config.loss.fn: {ref!r} is not callable")
    return obj


def plan_loss(loss: Loss) -> LossPlan:
    """Validate ``loss`` (name, params, custom function) before anything runs."""
    if loss.name == "custom":
        assert loss.fn is not None  # Loss.__post_init__ guarantees it
        return LossPlan(name="custom", params=dict(loss.params), fn=_import_fn(loss.fn))
    accepted = _PARAMS[loss.name]
    unknown = sorted(set(loss.params) - set(accepted))
    if unknown:
        listing = ", ".join(accepted) if accepted else "none"
        raise ConfigError(
            f"learning_config.loss.params: {', '.join(map(repr, unknown))} not understood by "
            f"the {loss.name} loss",
            hint=f"accepted params: {listing}",
        )
    params: dict[str, Any] = {}
    for key, default in accepted.items():
        value = loss.params.get(key, default)
        if value is None:
            fix = _REQUIRED.get(loss.name, {}).get(key)
            if fix is not None:
                raise ConfigError(
                    f"learning_config.loss.params.{key}: the {loss.name} loss needs it",
                    hint=fix,
                )
            params[key] = None
            continue
        zero_ok = (loss.name, key) in _ZERO_OK
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
            or (value == 0 and not zero_ok)
        ):
            bound = ">= 0" if zero_ok else "> 0"
            raise ConfigError(
                f"learning_config.loss.params.{key}: expected a number {bound}, got {value!r}"
            )
        params[key] = float(value)
    if loss.name in ("cispo", "gspo"):
        low, high = params.pop("clip_low_threshold"), params.pop("clip_high_threshold")
        if low > high:
            raise ConfigError(
                f"learning_config.loss.params.clip_low_threshold: {low} is above "
                f"clip_high_threshold {high}",
                hint="the ratio is clipped to [clip_low_threshold, clip_high_threshold]: "
                "give a low bound <= the high one (e.g. 0.8 and 1.2)",
            )
        params = {"low": low, "high": high}
    if loss.name == "ppo":
        low = params.pop("clip_range_low") or params["clip_range"]
        high = params.pop("clip_range_high") or params["clip_range"]
        if low >= 1:
            raise ConfigError(
                f"learning_config.loss.params: the ppo clip range below 1 must be < 1, got {low}"
            )
        params = {"low": low, "high": high}
    return LossPlan(name=loss.name, params=params, needs=_NEEDS.get(loss.name, ()))


@dataclass
class PreparedBatch:
    """A batch as right-padded tensors (``[B, T]``) plus its datums."""

    data: Sequence[Datum]
    lengths: list[int]
    input_ids: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict[str, "torch.Tensor"])

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)


def prepare_batch(
    data: Sequence[Datum], plan: LossPlan, *, vocab_rows: int, context_length: int
) -> PreparedBatch:
    """Check a batch against the model and loss, and pad it into tensors."""
    import torch

    if not data:
        raise ConfigError("batch: a forward(_backward) call needs at least one Datum")
    if plan.name == "dpo" and len(data) % 2:
        raise ConfigError(
            f"batch: the dpo loss takes (chosen, rejected) pairs; got {len(data)} datums",
            hint="send an even number of datums: chosen at even positions, rejected after each",
        )
    lengths = [len(d.model_input) for d in data]
    width = max(lengths)
    n = len(data) * width
    ids = [0] * n
    targets = [0] * n
    weights = [0.0] * n
    extra: dict[str, list[float]] = {name: [0.0] * n for name in plan.needs}
    for i, d in enumerate(data):
        size = lengths[i]
        inputs = d.loss_fn_inputs
        if size > context_length:
            raise ConfigError(
                f"batch[{i}].model_input has {size} tokens; the model's context is "
                f"{context_length}",
                hint="truncate or split the example (dataset_spec.max_length)",
            )
        if len(inputs.target_tokens) != size:
            raise ConfigError(
                f"batch[{i}].loss_fn_inputs.target_tokens has {len(inputs.target_tokens)} "
                f"entries; model_input has {size}"
            )
        for key, tokens in (
            ("model_input", d.model_input),
            ("loss_fn_inputs.target_tokens", inputs.target_tokens),
        ):
            top = max(tokens)
            if top >= vocab_rows:
                raise ConfigError(
                    f"batch[{i}].{key} holds token id {top}; the model has {vocab_rows} "
                    "embedding rows",
                    hint="tokenize with the session's tokenizer (backend.get_tokenizer)",
                )
        start = i * width
        ids[start : start + size] = d.model_input
        targets[start : start + size] = inputs.target_tokens
        weights[start : start + size] = (
            inputs.weights if inputs.weights is not None else [1.0] * size
        )
        for name, values in extra.items():
            given = getattr(inputs, name)
            if given is None:
                raise ConfigError(
                    f"batch[{i}].loss_fn_inputs.{name} is missing; the {plan.name} loss needs "
                    f"{' and '.join(plan.needs)} for every datum"
                )
            if len(given) != size:
                raise ConfigError(
                    f"batch[{i}].loss_fn_inputs.{name} has {len(given)} entries; model_input "
                    f"has {size}"
                )
            values[start : start + size] = given
        if plan.name == "gspo" and not any(
            v != 0 for v in extra["sequence_ratio_mask"][start : start + size]
        ):
            raise ConfigError(
                f"batch[{i}].loss_fn_inputs.sequence_ratio_mask marks no token; the gspo loss "
                "averages the sequence ratio over the tokens it marks (non-zero)",
                hint="set it to 1 on the sampled tokens (the completion) and 0 elsewhere",
            )
    shape = (len(data), width)
    return PreparedBatch(
        data=data,
        lengths=lengths,
        input_ids=torch.tensor(ids, dtype=torch.long).view(shape),
        targets=torch.tensor(targets, dtype=torch.long).view(shape),
        weights=torch.tensor(weights, dtype=torch.float32).view(shape),
        extra={k: torch.tensor(v, dtype=torch.float32).view(shape) for k, v in extra.items()},
    )


def _scalar(value: Any, what: str) -> float:
    import torch

    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ConfigError(
                f"{what} must be a scalar, got a tensor of shape {tuple(value.shape)}"
            )
        return float(value.detach().item())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{what} must be a number, got {type(value).__name__}")


def compute_loss(
    plan: LossPlan, batch: PreparedBatch, logprobs: torch.Tensor, *, grad: bool
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss tensor (to backpropagate when ``grad``) and its metrics."""
    import torch
    import torch.nn.functional as F

    w = batch.weights
    if plan.name == "custom":
        assert plan.fn is not None
        rows = [logprobs[i, :n] for i, n in enumerate(batch.lengths)]
        out = plan.fn(list(batch.data), rows, **plan.params)
        if not (isinstance(out, tuple) and len(out) == 2):  # pyright: ignore[reportUnknownArgumentType]
            raise ConfigError(
                "learning_config.loss.fn must return (loss_tensor, metrics_dict), "
                f"got {type(out).__name__}"
            )
        loss_value, raw_metrics = out  # pyright: ignore[reportUnknownVariableType]
        if not isinstance(loss_value, torch.Tensor) or loss_value.numel() != 1:
            raise ConfigError("learning_config.loss.fn must return a scalar torch tensor as loss")
        if grad and not loss_value.requires_grad:
            raise ConfigError(
                "learning_config.loss.fn returned a loss with no gradient",
                hint="compute the loss from the logprobs tensors it receives, with torch ops",
            )
        if not isinstance(raw_metrics, Mapping):
            raise ConfigError("learning_config.loss.fn must return a dict of metrics")
        metrics = {
            str(k): _scalar(v, f"metric {k!r} of learning_config.loss.fn")
            for k, v in raw_metrics.items()  # pyright: ignore[reportUnknownVariableType]
        }
        return loss_value.reshape(()), metrics
    if plan.name == "dpo":
        beta = plan.params["beta"]
        seq = (w * logprobs).sum(dim=1)
        ref = (w * batch.extra["ref_logprobs"]).sum(dim=1)
        chosen = seq[0::2] - ref[0::2]
        rejected = seq[1::2] - ref[1::2]
        margin = beta * (chosen - rejected)
        pair_losses = F.softplus(-margin)
        loss = pair_losses.mean()
        with torch.no_grad():
            metrics = {
                "loss:sum": float(pair_losses.sum()),
                "accuracy": float((margin > 0).float().mean()),
                "margin": float(margin.mean()),
                "reward:chosen": float((beta * chosen).mean()),
                "reward:rejected": float((beta * rejected).mean()),
                "logps:chosen": float(seq[0::2].mean()),
                "logps:rejected": float(seq[1::2].mean()),
                "pairs": float(margin.numel()),
            }
        return loss, metrics
    denom = w.abs().sum().clamp_min(1e-12)
    metrics: dict[str, float] = {"tokens": float((w != 0).sum())}
    if plan.name == "cross_entropy":
        total = -(w * logprobs).sum()
    else:
        sampled = batch.extra["logprobs"]
        ratio = torch.exp(logprobs - sampled)
        advantages = batch.extra["advantages"]
        if plan.name == "importance_sampling":
            total = -(w * ratio * advantages).sum()
        elif plan.name == "ppo":
            low, high = plan.params["low"], plan.params["high"]
            unclipped = ratio * advantages
            clipped = ratio.clamp(1.0 - low, 1.0 + high) * advantages
            total = -(w * torch.minimum(unclipped, clipped)).sum()
            with torch.no_grad():
                metrics["clip_fraction"] = float((w * (clipped < unclipped)).sum() / denom)
        elif plan.name == "cispo":
            low, high = plan.params["low"], plan.params["high"]
            coefficient = ratio.clamp(low, high).detach()
            total = -(w * coefficient * logprobs * advantages).sum()
            with torch.no_grad():
                outside = (ratio < low) | (ratio > high)
                metrics["clip_fraction"] = float((w.abs() * outside).sum() / denom)
        elif plan.name == "gspo":
            low, high = plan.params["low"], plan.params["high"]
            marked = (batch.extra["sequence_ratio_mask"] != 0).to(logprobs.dtype)
            token_log_ratio = (logprobs.detach() - sampled) * marked
            seq_log_ratio = token_log_ratio.sum(dim=1) / marked.sum(dim=1)
            seq_ratio = torch.exp(seq_log_ratio.unsqueeze(1) + logprobs - logprobs.detach())
            unclipped = seq_ratio * advantages
            clipped = seq_ratio.clamp(low, high) * advantages
            total = -(w * torch.minimum(unclipped, clipped)).sum()
            with torch.no_grad():
                metrics["clip_fraction"] = float((w.abs() * (clipped < unclipped)).sum() / denom)
                metrics["sequence_ratio:mean"] = float(torch.exp(seq_log_ratio).mean())
        else:  # dro
            beta = plan.params["beta"]
            penalty = 0.5 * beta * (logprobs - sampled) ** 2
            total = -(w * (logprobs * advantages - penalty)).sum()
        with torch.no_grad():
            metrics["ratio:mean"] = float((w * ratio).sum() / denom)
            metrics["kl:approx"] = float((w * (batch.extra["logprobs"] - logprobs)).sum() / denom)
    loss = total / denom
    metrics["loss:sum"] = float(total.detach())
    return loss, metrics

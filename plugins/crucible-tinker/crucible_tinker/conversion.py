"""Crucible IR <-> tinker SDK types: adapters, losses, batches, results, completion text.

Pure functions, no connection: what a crucible LoRA, Loss and batch of Datums
become for Tinker, and what Tinker's outputs become for crucible.
``numpy`` and ``tinker`` are imported when a conversion runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from crucible_core.contracts import Tokenizer
from crucible_core.errors import ConfigError, UnsupportedError
from crucible_core.ir.backend import Datum, ForwardBackwardResult
from crucible_core.ir.training import LoRA, Loss
from crucible_tinker.losses import LOSS_INPUTS, NAMED_LOSSES, tinker_config

if TYPE_CHECKING:
    from tinker import types

__all__ = [
    "NAMED_LOSSES",
    "check_loss",
    "completion_text",
    "custom_loss_fn",
    "fb_result",
    "lora_groups",
    "loss_config",
    "loss_scale",
    "tinker_datums",
]

_ATTENTION = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "qkv_proj",
        "query",
        "key",
        "value",
        "out_proj",
        "wq",
        "wk",
        "wv",
        "wo",
        "c_attn",
        "attn",
    }
)
_MLP = frozenset(
    {
        "gate_proj",
        "up_proj",
        "down_proj",
        "fc1",
        "fc2",
        "c_fc",
        "w1",
        "w2",
        "w3",
        "mlp",
        "dense_h_to_4h",
        "dense_4h_to_h",
        "gate_up_proj",
    }
)
_UNEMBED = frozenset({"lm_head", "unembed", "embed_out"})


def lora_groups(adapter: LoRA) -> tuple[bool, bool, bool]:
    """``(train_attn, train_mlp, train_unembed)`` for Tinker, which adapts whole layer groups.

    ``target_modules`` choose groups (``q_proj`` etc. the attention layers,
    ``gate_proj``/``up_proj``/``down_proj`` etc. the MLP, ``lm_head`` the
    unembedding, ``all-linear`` the attention and MLP layers); the ``train_*``
    flags then remove (``train_attn``/``train_mlp``) or add (``train_unembed``)
    groups, as crucible-local reads them. ``alpha``, ``dropout`` and ``bias``
    are not settable on Tinker and are ignored.
    """
    attn = mlp = unembed = False
    for name in adapter.target_modules:
        if name == "all-linear":
            attn = mlp = True
        elif name in _ATTENTION or "attn" in name or "attention" in name:
            attn = True
        elif name in _MLP:
            mlp = True
        elif name in _UNEMBED:
            unembed = True
        else:
            raise UnsupportedError(
                f"the tinker backend cannot target {name!r}: Tinker adapts whole layer groups",
                hint="name attention layers (q_proj, k_proj, v_proj, o_proj), MLP layers "
                "(gate_proj, up_proj, down_proj), lm_head, or 'all-linear'",
            )
    groups = (
        attn and adapter.train_attn,
        mlp and adapter.train_mlp,
        unembed or adapter.train_unembed,
    )
    if not any(groups):
        raise ConfigError(
            f"LoRA adapts nothing: target_modules {adapter.target_modules} with train_attn="
            f"{adapter.train_attn} and train_mlp={adapter.train_mlp}"
        )
    return groups


def check_loss(loss: Loss) -> None:
    """UnsupportedError unless ``loss`` is one the backend can run; ConfigError for params
    Tinker's loss of that name cannot be given (:func:`crucible_tinker.losses.tinker_config`).
    """
    if loss.name == "custom":
        return
    if loss.name not in NAMED_LOSSES:
        raise UnsupportedError(
            f"the tinker backend has no named loss {loss.name!r}",
            hint=f"use one of {', '.join(NAMED_LOSSES)}, or a custom loss "
            '(name = "custom", fn = "pkg.module:function") computed from logprobs',
        )
    tinker_config(loss.name, loss.params)


def loss_scale(batch: Sequence[Datum], loss: Loss) -> float:
    """``W``, the batch's total loss weight: ``sum |weights|`` (1 per token where absent).

    Crucible's contract reports ``loss`` as the weighted *mean* over the batch's
    loss tokens and backends take the gradient of that mean; Tinker's named
    losses are *sums* over tokens. Sending every weight (cross_entropy) or
    advantage (the policy losses) divided by ``W`` makes Tinker's gradient the
    gradient of the mean, so one learning rate means the same on every backend
    (dro's ``beta`` is divided too, :func:`loss_config`). Custom losses are sent
    unscaled (the function defines them).
    """
    import numpy as np

    if loss.name == "custom":
        return 1.0
    total = 0.0
    for d in batch:
        w = d.loss_fn_inputs.weights
        total += float(np.sum(np.abs(w))) if w is not None else float(len(d.model_input))
    return total if total > 0 else 1.0


def tinker_datums(batch: Sequence[Datum], loss: Loss, scale: float) -> list[types.Datum]:
    """``batch`` as tinker Datums for ``loss`` (see :func:`loss_scale` for ``scale``)."""
    import numpy as np
    from tinker import types

    out: list[types.Datum] = []
    for d in batch:
        li = d.loss_fn_inputs
        n = len(li.target_tokens)
        weights = np.asarray(li.weights if li.weights is not None else [1.0] * n, np.float32)
        inputs: dict[str, Any] = {"target_tokens": np.asarray(li.target_tokens, np.int64)}
        if loss.name == "cross_entropy":
            inputs["weights"] = weights / np.float32(scale)
        elif loss.name in LOSS_INPUTS:
            needs = LOSS_INPUTS[loss.name]
            if any(getattr(li, key) is None for key in needs):
                raise ConfigError(
                    f"the {loss.name} loss needs loss_fn_inputs."
                    f"{' and .'.join(needs)} for every datum"
                )
            inputs["logprobs"] = np.asarray(li.logprobs, np.float32)
            # Tinker's policy losses have no weights: fold them into the advantages.
            inputs["advantages"] = np.asarray(li.advantages, np.float32) * weights / scale
            if "sequence_ratio_mask" in needs:  # gspo: the tokens its sequence ratio averages
                inputs["sequence_ratio_mask"] = np.asarray(li.sequence_ratio_mask, np.float32)
        else:  # custom: every field goes to the loss function; the SDK sends the server
            # only target_tokens and weights.
            for key in ("weights", "advantages", "logprobs", "ref_logprobs"):
                value = getattr(li, key)
                if value is not None:
                    inputs[key] = np.asarray(value, np.float32)
        out.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(list(d.model_input)),
                loss_fn_inputs=inputs,
            )
        )
    return out


def loss_config(batch: Sequence[Datum], loss: Loss, scale: float) -> dict[str, float]:
    """Tinker's ``loss_fn_config`` for ``loss`` on ``batch`` (sent as :func:`tinker_datums`
    with ``scale``): :func:`crucible_tinker.losses.tinker_config` of its params, with dro's
    ``beta`` scaled like the advantages.

    dro's quadratic penalty ``beta / 2 * (logprobs - sampled)^2`` is not multiplied by
    the advantage, so dividing the advantages by ``W`` leaves it ``W`` times too heavy
    against crucible's weighted mean; it is sent as ``beta * w / W`` instead. That
    needs every token to carry the same weight ``w``: Tinker's dro takes no weights
    and penalises every token, so a datum whose prompt tokens weigh 0 (say) has no
    Tinker equivalent and is refused.
    """
    config = tinker_config(loss.name, loss.params)
    if loss.name != "dro":
        return config
    seen: set[float] = set()
    for d in batch:
        w = d.loss_fn_inputs.weights
        seen.update([1.0] if w is None else (float(x) for x in w))
    if len(seen) > 1:
        raise ConfigError(
            "the tinker backend's dro loss needs one weight on every token "
            f"(this batch has {len(seen)} different ones): Tinker's dro takes no weights and "
            "applies its quadratic penalty to every token, weighted or not",
            hint="drop loss_fn_inputs.weights (or make them all equal), or run dro on "
            "another backend (local computes the weighted loss)",
        )
    weight = seen.pop() if seen else 1.0
    config["beta"] = config["beta"] * weight / scale
    return config


def custom_loss_fn(ref: str) -> Callable[..., Any]:
    """The function a custom loss names (``"pkg.module:function"``)."""
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"custom loss {ref!r} is not callable")
    return obj


def fb_result(
    out: types.ForwardBackwardOutput, batch: Sequence[Datum], loss: Loss, scale: float
) -> ForwardBackwardResult:
    """A tinker ForwardBackwardOutput as crucible's result (``loss`` the weighted mean)."""
    metrics = {k: float(v) for k, v in out.metrics.items()}
    logprobs = [
        [float(x) for x in o["logprobs"].to_numpy().reshape(-1)] if "logprobs" in o else []
        for o in out.loss_fn_outputs
    ]
    # The inputs were divided by ``scale`` (loss_scale), so Tinker's sum is the mean.
    value = metrics.get("loss:sum", 0.0)
    metrics["loss:sum"] = value * scale
    return ForwardBackwardResult(
        loss=value,
        metrics=metrics,
        logprobs=logprobs,
        num_tokens=sum(len(d.model_input) for d in batch),
    )


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to its first stop string, and whether one was found.

    The server stops on its own decoding of the tokens, which may differ
    from this tokenizer's (special tokens rendered or skipped), so the text
    is cut here too: a completion's text never contains a stop string.
    """
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def completion_text(
    tokenizer: Tokenizer, tokens: Sequence[int], stops: Sequence[str]
) -> tuple[str, bool]:
    """A completion's text as the local path gives it: without the end-of-sequence token
    that ended it, and cut before the first stop string; and whether a stop string cut it.

    Tinker returns every sampled token, the one that stopped generation included (the
    EOS token, or the token that completed a stop string); ``tokens`` keep them, the
    text does not.
    """
    ids = list(tokens)
    eos = tokenizer.eos_token_id
    if ids and eos is not None and ids[-1] == eos:
        ids.pop()
    return _cut_at_stop(tokenizer.decode(ids), stops)

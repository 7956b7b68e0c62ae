"""Tinker's named losses <-> crucible's ``Loss``: the one mapping both directions use.

serve-tinker turns a request's ``loss_fn`` and ``loss_fn_config`` into a crucible
``Loss`` with :func:`crucible_params`; the ``tinker`` backend turns a crucible
``Loss`` into ``loss_fn`` and ``loss_fn_config`` with :func:`tinker_config`. Both
read the tables here, so the two directions cannot drift apart, and each is the
other's inverse (up to float rounding): ``crucible_params(n, tinker_config(n, p))``
is ``p`` with ppo's symmetric ``clip_range`` written as ``clip_range_low`` and
``clip_range_high``, and ``tinker_config(n, crucible_params(n, c)) == c``.

The losses keep their names. Their config keys are Tinker's (tinker-docs, Loss
Functions), and crucible's params use the same ones, except ppo's:

- ppo: Tinker's ``clip_low_threshold``/``clip_high_threshold`` bound the ratio
  (default 0.8 and 1.2); crucible's ``clip_range_low``/``clip_range_high`` are
  distances from 1 (``clip_range`` both; default 0.2), so
  ``clip_low_threshold = 1 - clip_range_low`` and
  ``clip_high_threshold = 1 + clip_range_high``;
- cispo, gspo: ``clip_low_threshold``/``clip_high_threshold`` on both sides;
- dro: ``beta`` on both sides.

Pure and light: no tinker, no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from crucible_core.errors import ConfigError
from crucible_core.ir.training import LOSS_INPUTS as IR_LOSS_INPUTS

__all__ = [
    "CRUCIBLE_PARAM_KEYS",
    "LOSS_CONFIG_KEYS",
    "LOSS_INPUTS",
    "NAMED_LOSSES",
    "NamedLoss",
    "crucible_params",
    "tinker_config",
]

NamedLoss = Literal["cross_entropy", "importance_sampling", "ppo", "cispo", "gspo", "dro"]
#: The losses Tinker runs by name that crucible defines too, under the same names. Not
#: here: ``stable_reinforce``, whose objective Tinker's docs do not give (docs/tinker.md).
NAMED_LOSSES: tuple[NamedLoss, ...] = (
    "cross_entropy",
    "importance_sampling",
    "ppo",
    "cispo",
    "gspo",
    "dro",
)
#: The ``loss_fn_config`` keys Tinker documents for each loss.
LOSS_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "cross_entropy": (),
    "importance_sampling": (),
    "ppo": ("clip_low_threshold", "clip_high_threshold"),
    "cispo": ("clip_low_threshold", "clip_high_threshold"),
    "gspo": ("clip_low_threshold", "clip_high_threshold"),
    "dro": ("beta",),
}
#: The ``Loss.params`` keys crucible's losses of these names take.
CRUCIBLE_PARAM_KEYS: dict[str, tuple[str, ...]] = {
    **LOSS_CONFIG_KEYS,
    "ppo": ("clip_range", "clip_range_low", "clip_range_high"),
}
#: The per-token ``loss_fn_inputs`` each loss reads besides ``target_tokens`` (and
#: ``weights``, which only cross_entropy takes on Tinker).
LOSS_INPUTS: dict[str, tuple[str, ...]] = {
    name: inputs for name, inputs in IR_LOSS_INPUTS.items() if name != "dpo"
}
#: Params without a default (Tinker documents none): refused when absent, as
#: crucible-local refuses them.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "gspo": ("clip_low_threshold", "clip_high_threshold"),
    "dro": ("beta",),
}
_PPO_HINT = (
    "the ratio is clipped to [clip_low_threshold, clip_high_threshold] around 1, e.g. 0.8 "
    "and 1.2 (Tinker's defaults)"
)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _unknown(keys: Mapping[str, Any], accepted: tuple[str, ...], what: str, where: str) -> None:
    unknown = sorted(set(keys) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{where}: {', '.join(map(repr, unknown))} not understood by {what}",
            hint=f"accepted: {', '.join(accepted) if accepted else 'none'}",
        )


def crucible_params(name: str, config: Mapping[str, float | str]) -> dict[str, float]:
    """crucible ``Loss.params`` for Tinker's ``loss_fn_config`` of loss ``name``.

    Only the keys Tinker documents for ``name`` are taken (ConfigError naming
    any other, e.g. crucible's own ``clip_range``: a Tinker client cannot send
    it to Tinker either). ppo's thresholds become distances from 1; ConfigError
    for thresholds that are not bounds around 1. Missing keys stay missing (the
    loss's default applies, or the backend names the one it needs).
    """
    accepted = LOSS_CONFIG_KEYS.get(name, ())
    _unknown(config, accepted, f"Tinker's {name} loss", "loss_fn_config")
    params = {key: _number(value, f"loss_fn_config.{key}") for key, value in config.items()}
    if name != "ppo":
        return params
    out: dict[str, float] = {}
    low = params.get("clip_low_threshold")
    high = params.get("clip_high_threshold")
    if low is not None:
        if not 0 < low < 1:
            raise ConfigError(
                f"loss_fn_config.clip_low_threshold = {low}: the ppo loss here needs a bound "
                "in (0, 1)",
                hint=_PPO_HINT,
            )
        out["clip_range_low"] = 1.0 - low
    if high is not None:
        if high <= 1:
            raise ConfigError(
                f"loss_fn_config.clip_high_threshold = {high}: the ppo loss here needs a "
                "bound above 1",
                hint=_PPO_HINT,
            )
        out["clip_range_high"] = high - 1.0
    return out


def tinker_config(name: str, params: Mapping[str, Any]) -> dict[str, float]:
    """Tinker's ``loss_fn_config`` for crucible's loss ``name`` with ``params``.

    Refuses (ConfigError naming ``learning_config.loss.params.<key>``) what
    crucible's loss of that name refuses: unknown keys, non-numbers, a missing
    gspo threshold or dro ``beta`` (no documented default), ppo distances
    outside (0, 1) below and (0, inf) above, cispo/gspo bounds below 0 (the
    high one 0 too) or in the wrong order, a negative dro ``beta``. Empty when
    ``params`` set nothing: Tinker's defaults are crucible's (ppo 0.8/1.2 =
    ``clip_range`` 0.2; cispo 0.8/1.2).
    """
    where = "learning_config.loss.params"
    _unknown(params, CRUCIBLE_PARAM_KEYS[name], f"the {name} loss", where)
    values = {key: _number(value, f"{where}.{key}") for key, value in params.items()}
    for key in _REQUIRED.get(name, ()):
        if key not in values:
            raise ConfigError(
                f"{where}.{key}: the {name} loss needs it",
                hint="Tinker documents no default for it: set it (gspo's thresholds bound "
                "the sequence ratio, e.g. 0.8 and 1.2; dro's beta weighs the quadratic "
                "penalty, e.g. 0.05)",
            )
    if name == "ppo":
        for key, value in values.items():
            if value <= 0:
                raise ConfigError(f"{where}.{key}: expected a number > 0, got {value}")
        symmetric = values.get("clip_range")
        low = values.get("clip_range_low", symmetric)
        high = values.get("clip_range_high", symmetric)
        out: dict[str, float] = {}
        if low is not None:
            if low >= 1:
                raise ConfigError(
                    f"{where}: the ppo clip range below 1 must be < 1, got {low}",
                    hint="the ratio is clipped to [1 - clip_range_low, 1 + clip_range_high]",
                )
            out["clip_low_threshold"] = 1.0 - low
        if high is not None:
            out["clip_high_threshold"] = 1.0 + high
        return out
    if name in ("cispo", "gspo"):
        for key, value in values.items():
            if value < 0 or (value == 0 and key == "clip_high_threshold"):
                bound = "> 0" if key == "clip_high_threshold" else ">= 0"
                raise ConfigError(f"{where}.{key}: expected a number {bound}, got {value}")
        low, high = values.get("clip_low_threshold", 0.8), values.get("clip_high_threshold", 1.2)
        if low > high:
            raise ConfigError(
                f"{where}.clip_low_threshold: {low} is above clip_high_threshold {high}",
                hint="the ratio is clipped to [clip_low_threshold, clip_high_threshold]",
            )
    if name == "dro" and values["beta"] < 0:
        raise ConfigError(f"{where}.beta: expected a number >= 0, got {values['beta']}")
    return values

"""Reward functions of ``workflow = "rl"``: resolved by name, called with a guard.

``rl.reward`` is the name of a reward registered through the
``register_rewards`` hook (crucible-datasets registers ``gsm8k``,
``exact_match`` and ``number``) or a ``"package.module:function"`` of the
user's. Either way the function is ``fn(completion, reference) -> float``.

:func:`resolve_reward` is called before anything runs (``crucible plan`` and
the recipe), so a misspelt name is refused with the registered names listed.
:func:`call_reward` turns what a reward does wrong (raises, returns a
non-number, nan or inf) into a :class:`~crucible_core.errors.ConfigError`
naming the reward and the sample: the recipe stops the run with it after a
checkpoint, so nothing trained is lost and ``crucible resume`` continues once
the function is fixed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from crucible_core.errors import ConfigError, CrucibleError

if TYPE_CHECKING:
    from crucible_core.plugins import PluginHost

__all__ = ["Reward", "call_reward", "resolve_reward"]

#: ``fn(completion, reference) -> float``.
Reward = Callable[[str, str], float]


def resolve_reward(name: str, host: PluginHost | None = None) -> Reward:
    """The reward function ``name`` (a registered reward or ``package.module:function``)."""
    if ":" in name:
        from crucible_core._imports import import_object

        try:
            fn: Any = import_object(name)
        except (ImportError, AttributeError, CrucibleError) as exc:
            raise ConfigError(
                f"rl.reward: cannot import {name!r}: {exc}",
                hint="write it as 'package.module:function', importable where training runs",
            ) from exc
    else:
        if host is None:
            from crucible_core.plugins import get_host

            host = get_host()
        known = host.registrations("reward")
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"rl.reward: no reward function named {name!r}; registered: "
                f"{', '.join(sorted(known)) or 'none'}",
                hint=hint + "or name your own as 'package.module:function'",
            )
        fn = known[name].load()
    if not callable(fn):
        raise ConfigError(f"rl.reward: {name!r} is not callable")
    return cast(Reward, fn)


def call_reward(fn: Reward, name: str, completion: str, reference: str, sample: str) -> float:
    """``fn(completion, reference)`` as a finite float, or a ConfigError naming ``name`` and
    ``sample`` (the sample's id) when it raises or returns anything else."""
    try:
        value: Any = fn(completion, reference)
    except Exception as exc:
        raise ConfigError(
            f"reward {name!r} raised {type(exc).__name__}: {exc} (sample {sample})",
            hint="fix the reward function, then continue the run with crucible resume",
            reward=name,
            sample=sample,
        ) from exc
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(
            f"reward {name!r} returned {value!r} for sample {sample}; a reward is a finite number",
            hint="fix the reward function, then continue the run with crucible resume",
            reward=name,
            sample=sample,
        )
    return float(value)

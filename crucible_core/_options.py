"""Checks for the queue's and the worker's numeric options (leases, polls, timeouts).

Why: ``nan`` compares false with everything, so ``lease_s <= 0`` lets it
through, and a NaN lease is stored as NULL: the job stays ``running``
forever. ``inf`` never expires either. Every duration and count the queue
and the worker take goes through here, and the error names the option as
the caller spells it (``lease_s`` in the library, ``--lease`` on the CLI).
"""

from __future__ import annotations

import math
from numbers import Real

from crucible_core.errors import ConfigError

__all__ = ["check_count", "check_seconds"]


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` as float seconds; ConfigError naming ``name`` unless finite and > 0.

    ``allow_zero`` also accepts 0 (a drain that does not wait, say).
    """
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(
            f"{name} must be a number of seconds {bound}, got {value!r}",
            option=name,
        )
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigError(
            f"{name} must be a finite number of seconds {bound}, got {value!r}",
            option=name,
        )
    return seconds


def check_count(name: str, value: object, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; ConfigError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{name} must be a whole number >= {minimum}, got {value!r}",
            option=name,
        )
    return value

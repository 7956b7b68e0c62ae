"""Validating the numbers a statistic is computed from (one place, one message)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from crucible_core.errors import ConfigError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["Alternative", "Numbers", "check_alternative", "sample"]

#: What the statistics accept as a sample: a sequence of numbers or a numpy array.
Numbers: TypeAlias = "Sequence[float] | np.ndarray[Any, Any]"

#: The direction of an alternative hypothesis, in scipy's words (``a`` vs ``b``).
Alternative = str


def sample(values: Iterable[float], name: str, *, at_least: int = 1) -> NDArray[np.float64]:
    """``values`` as a 1-D float array of finite numbers, at least ``at_least`` of them.

    A user mistake (too few values, NaN, infinity) raises ConfigError naming ``name``.
    """
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.ndim != 1:
        raise ConfigError(f"{name}: expected a flat list of numbers")
    if arr.size < at_least:
        raise ConfigError(
            f"{name}: needs at least {at_least} values, got {arr.size}",
            hint="collect more observations (seeds, examples) before testing",
        )
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name}: holds NaN or infinite values", hint="drop or fix them first")
    return arr


def check_alternative(alternative: str) -> str:
    """``alternative`` if it is one scipy knows, else ConfigError."""
    if alternative not in ("two-sided", "less", "greater"):
        raise ConfigError(
            f"alternative: {alternative!r} is not one of two-sided, less, greater",
        )
    return alternative

"""Multiple-comparison corrections of p-values: Bonferroni, Holm, Benjamini-Hochberg.

Each returns the adjusted p-values in the input order (capped at 1) and which
hypotheses are rejected at ``alpha``. Bonferroni and Holm control the
family-wise error rate; Benjamini-Hochberg the false discovery rate
(``scipy.stats.false_discovery_control``). Holm is the step-down
``max_{j<=i} min(1, (m - j + 1) p_(j))`` (Holm 1979), with numpy's
cumulative maximum.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
from scipy import stats as st

from crucible_core.errors import ConfigError

__all__ = ["METHODS", "Corrected", "benjamini_hochberg", "bonferroni", "correct", "holm"]


class Corrected(msgspec.Struct, frozen=True, kw_only=True):
    """Adjusted p-values (input order) and the rejections at ``alpha``."""

    method: str
    alpha: float
    p_values: list[float]
    adjusted: list[float]
    reject: list[bool]


def _p(p_values: Sequence[float]) -> np.ndarray:
    p = np.asarray(list(p_values), dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ConfigError("p_values: expected a non-empty list of numbers")
    if not np.all((p >= 0) & (p <= 1)):
        raise ConfigError("p_values: every p-value must be in [0, 1]")
    return p


def _result(method: str, alpha: float, p: np.ndarray, adj: np.ndarray) -> Corrected:
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha: {alpha} is not in (0, 1)")
    adj = np.minimum(adj, 1.0)
    return Corrected(
        method=method,
        alpha=alpha,
        p_values=[float(v) for v in p],
        adjusted=[float(v) for v in adj],
        reject=[bool(v <= alpha) for v in adj],
    )


def bonferroni(p_values: Sequence[float], *, alpha: float = 0.05) -> Corrected:
    """Bonferroni: each p times the number of tests."""
    p = _p(p_values)
    return _result("bonferroni", alpha, p, p * p.size)


def holm(p_values: Sequence[float], *, alpha: float = 0.05) -> Corrected:
    """Holm's step-down: uniformly more powerful than Bonferroni, same guarantee."""
    p = _p(p_values)
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adj = np.empty(m)
    adj[order] = stepped
    return _result("holm", alpha, p, adj)


def benjamini_hochberg(p_values: Sequence[float], *, alpha: float = 0.05) -> Corrected:
    """Benjamini-Hochberg step-up (false discovery rate), via scipy."""
    p = _p(p_values)
    return _result("benjamini-hochberg", alpha, p, st.false_discovery_control(p, method="bh"))


#: Correction name (as accepted by :func:`correct`) -> function.
METHODS = {
    "bonferroni": bonferroni,
    "holm": holm,
    "benjamini-hochberg": benjamini_hochberg,
    "bh": benjamini_hochberg,
}


def correct(p_values: Sequence[float], method: str = "holm", *, alpha: float = 0.05) -> Corrected:
    """Adjust ``p_values`` with the correction ``method`` names (see :data:`METHODS`)."""
    fn = METHODS.get(method)
    if fn is None:
        raise ConfigError(
            f"correction: unknown method {method!r}",
            hint="use one of " + ", ".join(sorted(METHODS)),
        )
    return fn(p_values, alpha=alpha)

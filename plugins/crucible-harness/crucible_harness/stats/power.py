"""Power and sample size of t-tests, from the noncentral t distribution (``scipy.stats.nct``).

``kind`` is ``"two-sample"`` (``n`` per group for ``a``, ``ratio * n`` for
``b``; df = n_a + n_b - 2, noncentrality d sqrt(n_a n_b / (n_a + n_b))) or
``"paired"`` / ``"one-sample"`` (n pairs; df = n - 1, noncentrality d sqrt(n)).
``effect_size`` is Cohen's d (d_z for paired). A two-sided power counts both
rejection regions, as statsmodels' ``TTestIndPower``/``TTestPower`` do, which
the tests use as the reference.
"""

from __future__ import annotations

import math

from scipy import optimize
from scipy import stats as st

from crucible_core.errors import ConfigError
from crucible_harness.stats._data import check_alternative

__all__ = ["t_test_power", "t_test_sample_size"]

_KINDS = ("two-sample", "paired", "one-sample")


def _df_nc(effect_size: float, n: float, kind: str, ratio: float) -> tuple[float, float]:
    if kind == "two-sample":
        n_b = ratio * n
        return n + n_b - 2, effect_size * math.sqrt(n * n_b / (n + n_b))
    if kind in ("paired", "one-sample"):
        return n - 1, effect_size * math.sqrt(n)
    raise ConfigError(f"kind: {kind!r} is not one of {', '.join(_KINDS)}")


def t_test_power(
    effect_size: float,
    n: float,
    *,
    alpha: float = 0.05,
    kind: str = "two-sample",
    alternative: str = "two-sided",
    ratio: float = 1.0,
) -> float:
    """The probability that a t-test at level ``alpha`` rejects when the true effect is
    ``effect_size`` with ``n`` observations (per group for two samples)."""
    check_alternative(alternative)
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha: {alpha} is not in (0, 1)")
    df, nc = _df_nc(effect_size, n, kind, ratio)
    if df <= 0:
        raise ConfigError(f"n: {n} leaves no degrees of freedom")
    if alternative == "two-sided":
        crit = float(st.t.ppf(1 - alpha / 2, df))
        return _above(df, nc, crit) + _above(df, -nc, crit)
    crit = float(st.t.ppf(1 - alpha, df))
    return _above(df, nc if alternative == "greater" else -nc, crit)


def _above(df: float, nc: float, crit: float) -> float:
    """P(T > crit) for T ~ nct(df, nc), always through the upper tail.

    P(T < -crit | nc) is computed as P(T > crit | -nc): scipy's ``nct.cdf`` returns
    NaN far in the lower tail where ``sf`` of the mirrored distribution is exact.
    """
    return float(st.nct(df, nc).sf(crit))


def t_test_sample_size(
    effect_size: float,
    *,
    power: float = 0.8,
    alpha: float = 0.05,
    kind: str = "two-sample",
    alternative: str = "two-sided",
    ratio: float = 1.0,
) -> int:
    """The smallest whole ``n`` (per group for two samples) whose power reaches ``power``.

    The real-valued root of power(n) = ``power`` comes from ``scipy.optimize.brentq``
    in a bracket found by doubling; the answer is its ceiling.
    """
    if effect_size == 0:
        raise ConfigError("effect_size: 0 cannot be detected at any sample size")
    if not 0 < power < 1:
        raise ConfigError(f"power: {power} is not in (0, 1)")
    if alternative == "less":
        effect_size = -effect_size
        alternative = "greater"
    if alternative == "greater" and effect_size < 0:
        raise ConfigError("effect_size: a one-sided 'greater' test needs a positive effect")

    def gap(n: float) -> float:
        return (
            t_test_power(
                effect_size, n, alpha=alpha, kind=kind, alternative=alternative, ratio=ratio
            )
            - power
        )

    low = 2.0
    if gap(low) >= 0:
        return math.ceil(low)
    high = 2 * low
    while gap(high) < 0:  # bracket the root by doubling (nct is NaN far beyond it)
        low, high = high, 2 * high
        if high > 1e8:
            raise ConfigError(
                f"effect_size: {effect_size} needs more than 10^8 observations for power {power}"
            )
    root: float = optimize.brentq(gap, low, high, xtol=1e-10)  # pyright: ignore[reportAssignmentType]
    n = math.ceil(root - 1e-9)
    return n if gap(n) >= -1e-12 else n + 1

"""Effect sizes: how large a difference is, beside whether it is there.

Conventions (each function says which):

* ``cohens_d(a, b)``: (mean a - mean b) / pooled SD (Cohen 1988, ddof=1).
* ``hedges_g(a, b)``: Cohen's d times the exact small-sample correction
  J = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)), df = n_a + n_b - 2 (Hedges 1981).
* ``glass_delta(a, b)``: (mean a - mean b) / SD of ``b``, the control (Glass 1976).
* ``cohens_dz(a, b)``: mean of the paired differences / their SD.
* ``eta_squared`` / ``omega_squared``: between-group share of the variance of a
  one-way layout, omega^2 being the less biased (Hays 1963).
* ``rank_biserial(a, b)``: 2 U_a / (n_a n_b) - 1 = P(a > b) - P(a < b) (Kerby 2014).
* ``paired_rank_biserial(a, b)``: (W+ - W-) / (W+ + W-) over non-zero differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import numpy as np
from scipy import special
from scipy import stats as st

from crucible_core.errors import ConfigError
from crucible_harness.stats._data import Numbers, sample

__all__ = [
    "EffectSize",
    "cohens_d",
    "cohens_dz",
    "eta_squared",
    "glass_delta",
    "hedges_g",
    "omega_squared",
    "paired_rank_biserial",
    "rank_biserial",
]


class EffectSize(msgspec.Struct, frozen=True, kw_only=True):
    """A named effect size (``name`` as a report prints it)."""

    name: str
    value: float


def _nonzero(value: float, what: str) -> float:
    if value == 0:
        raise ConfigError(f"{what} is zero: the effect size is undefined (constant samples)")
    return value


def _pooled_sd(x: np.ndarray, y: np.ndarray) -> float:
    df = x.size + y.size - 2
    var = ((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / df
    return math.sqrt(var)


def cohens_d(a: Numbers, b: Numbers) -> float:
    """Cohen's d with the pooled standard deviation (ddof=1)."""
    x, y = sample(a, "a", at_least=2), sample(b, "b", at_least=2)
    return float((x.mean() - y.mean()) / _nonzero(_pooled_sd(x, y), "the pooled SD"))


def hedges_correction(df: int) -> float:
    """Hedges' exact bias correction J(df) (``scipy.special.gammaln``)."""
    if df < 2:
        raise ConfigError(f"hedges_g: needs df >= 2 (n_a + n_b >= 4), got df={df}")
    return math.exp(
        float(special.gammaln(df / 2))
        - math.log(math.sqrt(df / 2))
        - float(special.gammaln((df - 1) / 2))
    )


def hedges_g(a: Numbers, b: Numbers) -> float:
    """Hedges' g: Cohen's d corrected for small-sample bias (exact J)."""
    x, y = sample(a, "a", at_least=2), sample(b, "b", at_least=2)
    return cohens_d(x, y) * hedges_correction(x.size + y.size - 2)  # type: ignore[arg-type]


def glass_delta(a: Numbers, b: Numbers) -> float:
    """Glass's delta: the mean difference in units of the control group ``b``'s SD."""
    x, y = sample(a, "a", at_least=1), sample(b, "b", at_least=2)
    return float((x.mean() - y.mean()) / _nonzero(float(y.std(ddof=1)), "the SD of b"))


def cohens_dz(a: Numbers, b: Numbers) -> float:
    """Cohen's d_z for paired samples: mean(a - b) / SD(a - b)."""
    x, y = sample(a, "a", at_least=2), sample(b, "b", at_least=2)
    if x.size != y.size:
        raise ConfigError(f"paired samples differ in length: {x.size} vs {y.size}")
    d = x - y
    return float(d.mean() / _nonzero(float(d.std(ddof=1)), "the SD of the differences"))


def _anova_sums(groups: Sequence[Numbers]) -> tuple[float, float, int, int]:
    if len(groups) < 2:
        raise ConfigError(f"needs at least 2 groups, got {len(groups)}")
    gs = [sample(g, f"group {i + 1}") for i, g in enumerate(groups)]
    allv = np.concatenate(gs)
    grand = allv.mean()
    ss_between = float(sum(g.size * (g.mean() - grand) ** 2 for g in gs))
    ss_total = float(((allv - grand) ** 2).sum())
    return ss_between, ss_total, len(gs), int(allv.size)


def eta_squared(*groups: Numbers) -> float:
    """eta^2 = SS_between / SS_total of a one-way layout."""
    ss_b, ss_t, _, _ = _anova_sums(groups)
    return ss_b / _nonzero(ss_t, "the total sum of squares")


def omega_squared(*groups: Numbers) -> float:
    """omega^2 = (SS_between - (k-1) MS_within) / (SS_total + MS_within)."""
    ss_b, ss_t, k, n = _anova_sums(groups)
    if n <= k:
        raise ConfigError("omega_squared: needs more observations than groups")
    ms_within = (ss_t - ss_b) / (n - k)
    return (ss_b - (k - 1) * ms_within) / _nonzero(ss_t + ms_within, "SS_total + MS_within")


def rank_biserial(a: Numbers, b: Numbers) -> float:
    """Rank-biserial correlation of two independent samples, from Mann-Whitney's U of ``a``."""
    x, y = sample(a, "a"), sample(b, "b")
    u = float(st.mannwhitneyu(x, y, alternative="two-sided").statistic)
    return 2 * u / (x.size * y.size) - 1


def paired_rank_biserial(a: Numbers, b: Numbers) -> float:
    """Matched-pairs rank-biserial correlation; 0 when every difference is zero."""
    x, y = sample(a, "a"), sample(b, "b")
    if x.size != y.size:
        raise ConfigError(f"paired samples differ in length: {x.size} vs {y.size}")
    d = x - y
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = st.rankdata(np.abs(d))
    plus, minus = float(ranks[d > 0].sum()), float(ranks[d < 0].sum())
    return (plus - minus) / (plus + minus)

"""Hypothesis tests: thin, typed wrappers of scipy.stats with one result type.

Every function validates its input (:func:`._data.sample`), calls the scipy
function named in its docstring and returns a :class:`TestResult`. No
numerics are written here: the point of this module is one vocabulary
(``test``, ``statistic``, ``p_value``, ``df``) for reports and
:func:`~crucible_harness.stats.compare`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
from scipy import stats as st

from crucible_core.errors import ConfigError
from crucible_harness.stats._data import Numbers, check_alternative, sample

__all__ = [
    "TestResult",
    "fisher_exact",
    "kruskal_wallis",
    "levene",
    "mann_whitney_u",
    "mcnemar",
    "one_way_anova",
    "paired_t",
    "shapiro_wilk",
    "student_t",
    "welch_t",
    "wilcoxon_signed_rank",
]


class TestResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one hypothesis test.

    ``df`` holds the degrees of freedom (two for an F test: between, within),
    empty for tests without them; ``n`` the size of each sample.
    """

    __test__ = False  # not a pytest test class, despite the name

    test: str
    statistic: float
    p_value: float
    alternative: str = "two-sided"
    df: tuple[float, ...] = ()
    n: tuple[int, ...] = ()


def _groups(groups: Sequence[Numbers], at_least: int) -> list[np.ndarray]:
    if len(groups) < 2:
        raise ConfigError(f"needs at least 2 groups, got {len(groups)}")
    return [sample(g, f"group {i + 1}", at_least=at_least) for i, g in enumerate(groups)]


def _pair(a: Numbers, b: Numbers, at_least: int) -> tuple[np.ndarray, np.ndarray]:
    x = sample(a, "a", at_least=at_least)
    y = sample(b, "b", at_least=at_least)
    if x.size != y.size:
        raise ConfigError(
            f"paired samples differ in length: a has {x.size}, b has {y.size}",
            hint="pair each observation of a with one of b (same item, same seed)",
        )
    return x, y


def student_t(a: Numbers, b: Numbers, *, alternative: str = "two-sided") -> TestResult:
    """Student's two-sample t-test, equal variances assumed (``scipy.stats.ttest_ind``)."""
    x, y = sample(a, "a", at_least=2), sample(b, "b", at_least=2)
    r: Any = st.ttest_ind(x, y, equal_var=True, alternative=check_alternative(alternative))
    return TestResult(
        test="Student's t-test",
        statistic=float(r.statistic),
        p_value=float(r.pvalue),
        alternative=alternative,
        df=(float(r.df),),
        n=(x.size, y.size),
    )


def welch_t(a: Numbers, b: Numbers, *, alternative: str = "two-sided") -> TestResult:
    """Welch's t-test, unequal variances (``scipy.stats.ttest_ind(equal_var=False)``)."""
    x, y = sample(a, "a", at_least=2), sample(b, "b", at_least=2)
    r: Any = st.ttest_ind(x, y, equal_var=False, alternative=check_alternative(alternative))
    return TestResult(
        test="Welch's t-test",
        statistic=float(r.statistic),
        p_value=float(r.pvalue),
        alternative=alternative,
        df=(float(r.df),),
        n=(x.size, y.size),
    )


def paired_t(a: Numbers, b: Numbers, *, alternative: str = "two-sided") -> TestResult:
    """Paired t-test on ``a - b`` (``scipy.stats.ttest_rel``)."""
    x, y = _pair(a, b, 2)
    r: Any = st.ttest_rel(x, y, alternative=check_alternative(alternative))
    return TestResult(
        test="paired t-test",
        statistic=float(r.statistic),
        p_value=float(r.pvalue),
        alternative=alternative,
        df=(float(r.df),),
        n=(x.size, y.size),
    )


def one_way_anova(*groups: Numbers) -> TestResult:
    """One-way ANOVA F test (``scipy.stats.f_oneway``); ``df`` is (between, within).

    Groups with equal means can give F a rounding error's worth below zero, for
    which scipy's p-value is NaN: F is then 0 and p 1, their exact values.
    """
    gs = _groups(groups, 2)
    r: Any = st.f_oneway(*gs)
    k, total = len(gs), sum(g.size for g in gs)
    f = float(r.statistic)
    return TestResult(
        test="one-way ANOVA",
        statistic=max(f, 0.0),
        p_value=float(r.pvalue) if f > 0 else 1.0,
        df=(float(k - 1), float(total - k)),
        n=tuple(g.size for g in gs),
    )


def mann_whitney_u(
    a: Numbers,
    b: Numbers,
    *,
    alternative: str = "two-sided",
    method: str = "auto",
) -> TestResult:
    """Mann-Whitney U test; ``statistic`` is U of ``a`` (``scipy.stats.mannwhitneyu``)."""
    x, y = sample(a, "a"), sample(b, "b")
    r: Any = st.mannwhitneyu(x, y, alternative=check_alternative(alternative), method=method)
    return TestResult(
        test="Mann-Whitney U test",
        statistic=float(r.statistic),
        p_value=float(r.pvalue),
        alternative=alternative,
        n=(x.size, y.size),
    )


def wilcoxon_signed_rank(
    a: Numbers,
    b: Numbers,
    *,
    alternative: str = "two-sided",
    zero_method: str = "wilcox",
) -> TestResult:
    """Wilcoxon signed-rank test on the pairs' differences (``scipy.stats.wilcoxon``).

    With ``zero_method="wilcox"`` (scipy's default) zero differences are dropped;
    ConfigError if every difference is zero (there is nothing to rank).
    """
    x, y = _pair(a, b, 1)
    if np.all(x == y):
        raise ConfigError("wilcoxon: every difference is zero; the samples are identical")
    r: Any = st.wilcoxon(x, y, alternative=check_alternative(alternative), zero_method=zero_method)
    return TestResult(
        test="Wilcoxon signed-rank test",
        statistic=float(r.statistic),
        p_value=float(r.pvalue),
        alternative=alternative,
        n=(x.size, y.size),
    )


def kruskal_wallis(*groups: Numbers) -> TestResult:
    """Kruskal-Wallis H test (``scipy.stats.kruskal``); ``df`` is groups - 1."""
    gs = _groups(groups, 1)
    if len({float(v) for g in gs for v in g}) == 1:
        raise ConfigError("kruskal_wallis: every value is the same; there is nothing to rank")
    r: Any = st.kruskal(*gs)
    return TestResult(
        test="Kruskal-Wallis H test",
        statistic=float(r.statistic),
        p_value=float(r.pvalue),
        df=(float(len(gs) - 1),),
        n=tuple(g.size for g in gs),
    )


def shapiro_wilk(x: Numbers) -> TestResult:
    """Shapiro-Wilk test of normality (``scipy.stats.shapiro``): small p = not normal.

    Needs 3 values that are not all equal (a constant has no shape to test).
    """
    arr = sample(x, "x", at_least=3)
    if np.ptp(arr) == 0:
        raise ConfigError("shapiro_wilk: every value is the same; normality cannot be tested")
    r: Any = st.shapiro(arr)
    return TestResult(
        test="Shapiro-Wilk test",
        statistic=float(r.statistic),
        p_value=float(r.pvalue),
        n=(arr.size,),
    )


def levene(*groups: Numbers, center: str = "median") -> TestResult:
    """Levene's test of equal variances (``scipy.stats.levene``).

    ``center="median"`` (scipy's default, the Brown-Forsythe variant) is robust to
    non-normal data; ``"mean"`` is Levene's original.
    """
    gs = _groups(groups, 2)
    r: Any = st.levene(*gs, center=center)
    k, total = len(gs), sum(g.size for g in gs)
    return TestResult(
        test="Levene's test" if center == "mean" else "Levene's test (Brown-Forsythe)",
        statistic=float(r.statistic),
        p_value=float(r.pvalue),
        df=(float(k - 1), float(total - k)),
        n=tuple(g.size for g in gs),
    )


def mcnemar(a: Numbers, b: Numbers) -> TestResult:
    """McNemar's exact test for paired 0/1 outcomes (same items scored twice).

    Only discordant pairs carry information: with ``n01`` items right under
    ``b`` only and ``n10`` right under ``a`` only, under the null each
    discordant pair is a fair coin, so the p-value is the exact two-sided
    binomial test of ``n10`` in ``n01 + n10`` (``scipy.stats.binomtest``);
    ``statistic`` is ``n10``. No discordant pair: p = 1.
    """
    x, y = _pair(a, b, 1)
    if not np.all(np.isin(x, (0.0, 1.0))) or not np.all(np.isin(y, (0.0, 1.0))):
        raise ConfigError("mcnemar: outcomes must be 0 or 1 (wrong/right)")
    n10 = int(np.sum((x == 1) & (y == 0)))
    n01 = int(np.sum((x == 0) & (y == 1)))
    p = 1.0 if n10 + n01 == 0 else float(st.binomtest(n10, n10 + n01, 0.5).pvalue)
    return TestResult(
        test="McNemar's exact test",
        statistic=float(n10),
        p_value=p,
        n=(x.size, y.size),
    )


def fisher_exact(a: Numbers, b: Numbers) -> TestResult:
    """Fisher's exact test for two independent samples of 0/1 outcomes.

    The 2x2 table (successes, failures) x (a, b) goes to
    ``scipy.stats.fisher_exact``; ``statistic`` is its odds ratio.
    """
    x, y = sample(a, "a"), sample(b, "b")
    if not np.all(np.isin(x, (0.0, 1.0))) or not np.all(np.isin(y, (0.0, 1.0))):
        raise ConfigError("fisher_exact: outcomes must be 0 or 1 (wrong/right)")
    table = [[int(x.sum()), int(y.sum())], [int(x.size - x.sum()), int(y.size - y.sum())]]
    r: Any = st.fisher_exact(table)
    return TestResult(
        test="Fisher's exact test",
        statistic=float(r.statistic),
        p_value=float(r.pvalue),
        n=(x.size, y.size),
    )

"""``compare(a, b)``: the right test for two samples, chosen from checks, with the reason.

The choice, in order (``alpha`` is also the level of the checks):

1. 0/1 outcomes (right/wrong per item): McNemar's exact test when paired
   (the same items), Fisher's exact test when not. Effect: difference in
   proportions.
2. Paired: Shapiro-Wilk on the differences. Normal: paired t-test (effect
   Cohen's d_z); not: Wilcoxon signed-rank (matched-pairs rank-biserial).
3. Independent: Shapiro-Wilk on each sample. Both normal: Levene
   (Brown-Forsythe) on the variances; equal: Student's t, unequal: Welch's
   t (effect Hedges' g). Otherwise Mann-Whitney U (rank-biserial).

Choosing a test from pre-tests on the same data shifts its error rate a
little; ``test=`` fixes the test in advance (what a pre-registered analysis
does) and the checks are then only reported. Every result carries a
bootstrap (BCa) interval of mean(a) - mean(b).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import numpy as np

from crucible_core.errors import ConfigError
from crucible_harness.stats import effects, significance
from crucible_harness.stats._data import Numbers, sample
from crucible_harness.stats.bootstrap import Interval, difference_ci
from crucible_harness.stats.effects import EffectSize
from crucible_harness.stats.significance import TestResult

__all__ = ["TESTS", "Comparison", "compare"]


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`compare` found: the test, why it, the effect and the difference."""

    test: TestResult
    reason: str
    effect_size: EffectSize
    difference: Interval
    alpha: float
    significant: bool
    paired: bool
    checks: dict[str, float] = {}


#: Test names ``compare(test=...)`` accepts -> (function, paired?).
TESTS: dict[str, tuple[Callable[..., TestResult], bool]] = {
    "mcnemar": (significance.mcnemar, True),
    "paired_t": (significance.paired_t, True),
    "wilcoxon": (significance.wilcoxon_signed_rank, True),
    "fisher": (significance.fisher_exact, False),
    "student_t": (significance.student_t, False),
    "welch_t": (significance.welch_t, False),
    "mann_whitney": (significance.mann_whitney_u, False),
}


def _binary(x: np.ndarray) -> bool:
    return bool(np.all(np.isin(x, (0.0, 1.0))))


def _normal(x: np.ndarray, label: str, alpha: float, checks: dict[str, float]) -> tuple[bool, str]:
    if np.ptp(x) == 0:
        return False, f"{label} is constant"
    p = significance.shapiro_wilk(x).p_value
    checks[f"shapiro_wilk[{label}]"] = p
    if p > alpha:
        return True, f"{label} looks normal (Shapiro-Wilk p={p:.3g})"
    return False, f"{label} does not look normal (Shapiro-Wilk p={p:.3g})"


def _choose(
    x: np.ndarray, y: np.ndarray, paired: bool, alpha: float, checks: dict[str, float]
) -> tuple[str, str]:
    if _binary(x) and _binary(y):
        if paired:
            return (
                "mcnemar",
                "0/1 outcomes on the same items: McNemar's exact test on the discordant pairs",
            )
        return "fisher", "0/1 outcomes of independent samples: Fisher's exact test"
    if paired:
        d = x - y
        if d.size < 3:
            return "paired_t", "fewer than 3 pairs: normality cannot be checked; paired t-test"
        ok, why = _normal(d, "a - b", alpha, checks)
        return (
            ("paired_t", f"{why}: paired t-test")
            if ok
            else (
                "wilcoxon",
                f"{why}: Wilcoxon signed-rank test",
            )
        )
    if x.size < 3 or y.size < 3:
        return (
            "welch_t",
            "fewer than 3 values in a sample: normality cannot be checked; "
            "Welch's t-test (no equal-variance assumption)",
        )
    ok_a, why_a = _normal(x, "a", alpha, checks)
    ok_b, why_b = _normal(y, "b", alpha, checks)
    if not (ok_a and ok_b):
        return "mann_whitney", f"{why_a}, {why_b}: Mann-Whitney U test"
    lev = significance.levene(x, y).p_value
    checks["levene"] = lev
    if lev > alpha:
        return (
            "student_t",
            f"{why_a}, {why_b}, variances equal (Levene p={lev:.3g}): Student's t-test",
        )
    return "welch_t", f"{why_a}, {why_b}, variances differ (Levene p={lev:.3g}): Welch's t-test"


def _effect(name: str, x: np.ndarray, y: np.ndarray) -> EffectSize:
    if name in ("mcnemar", "fisher"):
        return EffectSize(name="difference in proportions", value=float(x.mean() - y.mean()))
    if name == "paired_t":
        d = x - y
        if np.ptp(d) == 0:
            return EffectSize(name="mean difference", value=float(d.mean()))
        return EffectSize(name="Cohen's d_z", value=effects.cohens_dz(x, y))
    if name == "wilcoxon":
        return EffectSize(name="rank-biserial", value=effects.paired_rank_biserial(x, y))
    if name == "mann_whitney":
        return EffectSize(name="rank-biserial", value=effects.rank_biserial(x, y))
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return EffectSize(name="mean difference", value=float(x.mean() - y.mean()))
    return EffectSize(name="Hedges' g", value=effects.hedges_g(x, y))


def _run(name: str, x: np.ndarray, y: np.ndarray, alternative: str) -> TestResult:
    if name in ("paired_t", "wilcoxon") and np.all(x == y):
        return TestResult(
            test="no test (identical pairs)", statistic=0.0, p_value=1.0, n=(x.size, y.size)
        )
    fn, _ = TESTS[name]
    if name in ("mcnemar", "fisher"):
        return fn(x, y)
    return fn(x, y, alternative=alternative)


def compare(
    a: Numbers,
    b: Numbers,
    *,
    paired: bool = False,
    alpha: float = 0.05,
    test: str | None = None,
    alternative: str = "two-sided",
    seed: int = 0,
) -> Comparison:
    """Test whether ``a`` and ``b`` differ; see the module docstring for the choice.

    ``paired``: ``a[i]`` and ``b[i]`` are the same item (example, seed) measured
    twice. ``test`` forces one of :data:`TESTS`. ``seed`` fixes the bootstrap.
    """
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha: {alpha} is not in (0, 1)")
    x, y = sample(a, "a", at_least=2), sample(b, "b", at_least=2)
    if paired and x.size != y.size:
        raise ConfigError(
            f"paired samples differ in length: a has {x.size}, b has {y.size}",
            hint="pair each observation of a with one of b, or compare with paired=False",
        )
    checks: dict[str, float] = {}
    if test is None:
        name, reason = _choose(x, y, paired, alpha, checks)
    else:
        if test not in TESTS:
            raise ConfigError(
                f"test: unknown test {test!r}", hint="use one of " + ", ".join(sorted(TESTS))
            )
        name, reason = test, f"{test} chosen by the caller"
        if TESTS[test][1] != paired:
            raise ConfigError(
                f"test: {test} is for {'paired' if TESTS[test][1] else 'independent'} samples",
                hint="pass paired=True/False to match",
            )
    result = _run(name, x, y, alternative)
    return Comparison(
        test=result,
        reason=reason,
        effect_size=_effect(name, x, y),
        difference=difference_ci(x, y, paired=paired, seed=seed),
        alpha=alpha,
        significant=result.p_value <= alpha,
        paired=paired,
        checks=checks,
    )

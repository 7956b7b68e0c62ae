"""crucible_harness.stats against textbook values (R's outputs on R's datasets) and
reference implementations (scipy called directly, statsmodels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from crucible_harness import stats
from scipy import stats as st
from statsmodels.stats import contingency_tables, multitest, power

from crucible_core.errors import ConfigError

# Student's sleep data (Cushny & Peebles 1905; R's `sleep`): extra hours of sleep, two drugs,
# the same 10 patients.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
# R's PlantGrowth: dried weight of plants under a control and two treatments.
CTRL = [4.17, 5.58, 5.18, 6.11, 4.50, 4.61, 5.17, 4.53, 5.33, 5.14]
TRT1 = [4.81, 4.17, 4.41, 3.59, 5.87, 3.83, 6.03, 4.89, 4.32, 4.69]
TRT2 = [6.31, 5.12, 5.54, 5.50, 5.37, 5.29, 4.92, 6.15, 5.80, 5.26]


def test_welch_matches_r_on_sleep() -> None:
    # R: t.test(extra ~ group, data = sleep): t = -1.8608, df = 17.776, p-value = 0.07939
    r = stats.welch_t(SLEEP_1, SLEEP_2)
    assert r.statistic == pytest.approx(-1.8608, abs=1e-4)
    assert r.df[0] == pytest.approx(17.776, abs=1e-3)
    assert r.p_value == pytest.approx(0.07939, abs=1e-5)


def test_student_matches_r_on_sleep() -> None:
    # R: t.test(..., var.equal = TRUE): t = -1.8608, df = 18, p-value = 0.07919
    r = stats.student_t(SLEEP_1, SLEEP_2)
    assert r.df == (18.0,)
    assert r.p_value == pytest.approx(0.07919, abs=1e-5)


def test_paired_matches_r_on_sleep() -> None:
    # R: t.test(..., paired = TRUE): t = -4.0621, df = 9, p-value = 0.002833
    r = stats.paired_t(SLEEP_1, SLEEP_2)
    assert r.statistic == pytest.approx(-4.0621, abs=1e-4)
    assert r.df == (9.0,)
    assert r.p_value == pytest.approx(0.002833, abs=1e-6)


def test_anova_and_effect_sizes_match_r_on_plantgrowth() -> None:
    # R: summary(aov(weight ~ group, PlantGrowth)): F = 4.846 on 2, 27 df, p = 0.0159;
    # Sum Sq group 3.766, residuals 10.492.
    r = stats.one_way_anova(CTRL, TRT1, TRT2)
    assert r.statistic == pytest.approx(4.846, abs=1e-3)
    assert r.df == (2.0, 27.0)
    assert r.p_value == pytest.approx(0.01591, abs=1e-5)
    ss_b, ss_w = 3.76634, 10.49209
    assert stats.eta_squared(CTRL, TRT1, TRT2) == pytest.approx(ss_b / (ss_b + ss_w), abs=1e-4)
    ms_w = ss_w / 27
    omega = (ss_b - 2 * ms_w) / (ss_b + ss_w + ms_w)
    assert stats.omega_squared(CTRL, TRT1, TRT2) == pytest.approx(omega, abs=1e-4)


def test_kruskal_matches_r_on_plantgrowth() -> None:
    # R: kruskal.test(weight ~ group, PlantGrowth): chi-squared = 7.9882, df = 2, p = 0.01842
    r = stats.kruskal_wallis(CTRL, TRT1, TRT2)
    assert r.statistic == pytest.approx(7.9882, abs=1e-4)
    assert r.df == (2.0,)
    assert r.p_value == pytest.approx(0.01842, abs=1e-5)


def test_rank_and_variance_tests_equal_scipy() -> None:
    mw = stats.mann_whitney_u(CTRL, TRT2)
    ref = st.mannwhitneyu(CTRL, TRT2, alternative="two-sided")
    assert (mw.statistic, mw.p_value) == (float(ref.statistic), float(ref.pvalue))
    w = stats.wilcoxon_signed_rank(CTRL, TRT1)
    ref_w = st.wilcoxon(CTRL, TRT1)
    assert (w.statistic, w.p_value) == (float(ref_w.statistic), float(ref_w.pvalue))
    sw = stats.shapiro_wilk(CTRL)
    assert sw.p_value == float(st.shapiro(CTRL).pvalue)
    lev = stats.levene(CTRL, TRT1, TRT2)
    assert lev.p_value == float(st.levene(CTRL, TRT1, TRT2).pvalue)
    assert stats.levene(CTRL, TRT1, center="mean").test == "Levene's test"


def test_cohens_d_and_hedges_g_by_hand() -> None:
    x, y = np.array(SLEEP_2), np.array(SLEEP_1)
    pooled = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)  # equal n
    d = (x.mean() - y.mean()) / pooled
    assert stats.cohens_d(SLEEP_2, SLEEP_1) == pytest.approx(d)
    # Hedges' exact J(18) is within 1e-4 of the familiar approximation 1 - 3 / (4 df - 1).
    assert stats.hedges_g(SLEEP_2, SLEEP_1) == pytest.approx(d * (1 - 3 / 71), abs=1e-3)
    assert abs(stats.hedges_g(SLEEP_2, SLEEP_1)) < abs(d)
    assert stats.glass_delta(SLEEP_2, SLEEP_1) == pytest.approx(
        (x.mean() - y.mean()) / y.std(ddof=1)
    )
    diff = x - y
    assert stats.cohens_dz(SLEEP_2, SLEEP_1) == pytest.approx(diff.mean() / diff.std(ddof=1))


def test_rank_biserial_is_dominance() -> None:
    # P(a > b) - P(a < b), counted over every pair.
    a, b = CTRL, TRT1
    dominance = np.mean([np.sign(x - y) for x in a for y in b])
    assert stats.rank_biserial(a, b) == pytest.approx(dominance)
    # Matched pairs: (W+ - W-) / (W+ + W-); sleep differences are all <= 0 -> -1.
    assert stats.paired_rank_biserial(SLEEP_1, SLEEP_2) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("kind", "alternative"),
    [
        ("two-sample", "two-sided"),
        ("two-sample", "greater"),
        ("paired", "two-sided"),
        ("one-sample", "greater"),
    ],
)
def test_power_equals_statsmodels(kind: str, alternative: str) -> None:
    sm_alt = {"two-sided": "two-sided", "greater": "larger"}[alternative]
    ref = power.TTestIndPower() if kind == "two-sample" else power.TTestPower()
    for d, n in [(0.2, 50), (0.5, 20), (0.8, 12)]:
        ours = stats.t_test_power(d, n, kind=kind, alternative=alternative)
        assert ours == pytest.approx(ref.power(d, n, 0.05, alternative=sm_alt), abs=1e-9)
    n = stats.t_test_sample_size(0.5, power=0.8, kind=kind, alternative=alternative)
    exact = ref.solve_power(0.5, power=0.8, alpha=0.05, alternative=sm_alt)
    assert n == math.ceil(exact)


def test_sample_size_textbook() -> None:
    # Cohen (1988): a medium effect (d = 0.5), alpha 0.05 two-sided, power 0.8 -> 64 per group.
    assert stats.t_test_sample_size(0.5) == 64
    assert stats.t_test_power(0.5, 64) >= 0.8 > stats.t_test_power(0.5, 63)
    assert stats.t_test_sample_size(-0.5, alternative="less") == stats.t_test_sample_size(
        0.5, alternative="greater"
    )


def test_corrections_equal_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.2, 0.04, 0.5]
    for ours, theirs in [("bonferroni", "bonferroni"), ("holm", "holm"), ("bh", "fdr_bh")]:
        got = stats.correct(p, ours, alpha=0.05)
        reject, adjusted, _, _ = multitest.multipletests(p, alpha=0.05, method=theirs)
        assert got.adjusted == pytest.approx(list(adjusted))
        assert got.reject == [bool(v) for v in reject]
    with pytest.raises(ConfigError, match="unknown method 'sidak'"):
        stats.correct(p, "sidak")


def test_mcnemar_equals_statsmodels_exact() -> None:
    rng = np.random.default_rng(3)
    a = (rng.random(60) < 0.7).astype(float)
    b = (rng.random(60) < 0.45).astype(float)
    table = [
        [int(np.sum((a == 1) & (b == 1))), int(np.sum((a == 1) & (b == 0)))],
        [int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 0) & (b == 0)))],
    ]
    ref = contingency_tables.mcnemar(table, exact=True)
    assert stats.mcnemar(a, b).p_value == pytest.approx(float(ref.pvalue))
    assert stats.mcnemar([1, 0, 1], [1, 0, 1]).p_value == 1.0


def test_bootstrap_bca_is_scipys_and_near_the_t_interval() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(10, 2, 80)
    ci = stats.bootstrap_ci(x, seed=7)
    ref = st.bootstrap((x,), np.mean, method="BCa", rng=np.random.default_rng(7))
    assert (ci.low, ci.high) == (ref.confidence_interval.low, ref.confidence_interval.high)
    t_low, t_high = st.t.interval(0.95, 79, loc=x.mean(), scale=st.sem(x))
    assert ci.low == pytest.approx(t_low, abs=0.15)
    assert ci.high == pytest.approx(t_high, abs=0.15)
    assert stats.bootstrap_ci(x, seed=7) == ci  # seeded: same data, same interval
    const = stats.bootstrap_ci([1.0, 1.0, 1.0])
    assert (const.low, const.estimate, const.high) == (1.0, 1.0, 1.0)


def test_difference_ci_covers_the_true_shift() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1, 200), rng.normal(0.0, 1, 150)
    ci = stats.difference_ci(a, b)
    assert ci.low < 1.0 < ci.high
    assert ci.estimate == pytest.approx(a.mean() - b.mean())


def test_compare_explains_its_choice() -> None:
    rng = np.random.default_rng(2)
    normal_a, normal_b = rng.normal(0, 1, 40), rng.normal(0.8, 1, 40)
    c = stats.compare(normal_a, normal_b)
    assert c.test.test == "Student's t-test"
    assert "Levene" in c.reason
    assert "looks normal" in c.reason
    assert c.significant
    assert c.effect_size.name == "Hedges' g"
    assert c.effect_size.value < 0

    wide = rng.normal(0.8, 6, 40)
    assert stats.compare(normal_a, wide).test.test == "Welch's t-test"

    skewed = rng.exponential(1, 40) ** 3
    c = stats.compare(normal_a, skewed)
    assert c.test.test == "Mann-Whitney U test"
    assert "does not look normal" in c.reason
    assert c.effect_size.name == "rank-biserial"

    c = stats.compare(SLEEP_1, SLEEP_2, paired=True)
    assert c.test.test in ("paired t-test", "Wilcoxon signed-rank test")
    assert "a - b" in c.reason

    right_a = [1.0] * 30 + [0.0] * 10
    right_b = [0.0] * 30 + [1.0] * 2 + [0.0] * 8
    c = stats.compare(right_a, right_b, paired=True)
    assert c.test.test == "McNemar's exact test"
    assert c.effect_size.value == pytest.approx(0.75 - 0.05)
    assert c.significant
    assert stats.compare(right_a, right_b).test.test == "Fisher's exact test"


def test_compare_forced_test_and_bad_input() -> None:
    c = stats.compare(SLEEP_1, SLEEP_2, paired=True, test="wilcoxon")
    assert c.reason == "wilcoxon chosen by the caller"
    assert c.checks == {}
    with pytest.raises(ConfigError, match="for paired samples"):
        stats.compare(SLEEP_1, SLEEP_2, test="wilcoxon")
    with pytest.raises(ConfigError, match="differ in length"):
        stats.compare([1, 2, 3], [1, 2], paired=True)
    with pytest.raises(ConfigError, match="NaN"):
        stats.compare([1, float("nan")], [1, 2])
    with pytest.raises(ConfigError, match="at least 2"):
        stats.compare([1], [1, 2])
    same = stats.compare([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], paired=True)
    assert same.test.p_value == 1.0
    assert not same.significant


def test_power_far_in_the_tail_is_a_probability() -> None:
    # scipy's nct.cdf is NaN this far in the lower tail; found by the property test.
    p = stats.t_test_power(1.5, 63)
    assert p == pytest.approx(power.TTestIndPower().power(1.5, 63, 0.05), abs=1e-9)
    assert 0.999 < p <= 1.0


def test_anova_equal_means_is_p_one_not_nan() -> None:
    # F rounds to -2.8e-33 here and scipy's p-value is NaN; found by the property test.
    r = stats.one_way_anova([0.0, 0.0, 2.0, 13.0, 1.5], [0.0, 0.0, 11.5, 0.0, 5.0])
    assert (r.statistic, r.p_value) == (0.0, 1.0)

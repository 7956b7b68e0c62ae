"""Hypothesis properties of crucible_harness.stats: ranges, symmetries, monotonicity."""

from __future__ import annotations

import numpy as np
import pytest
from crucible_harness import stats
from hypothesis import assume, given, settings
from hypothesis import strategies as hs

# Values on a grid of 0.5 keep the arithmetic exact enough for symmetry checks while
# still producing ties (the hard case for rank tests).
values = hs.lists(hs.integers(-40, 40).map(lambda i: i / 2), min_size=4, max_size=30)
p_values = hs.lists(hs.floats(0.0, 1.0), min_size=1, max_size=40)


def _varied(x: list[float]) -> bool:
    return len(set(x)) > 1


@settings(max_examples=60, deadline=None)
@given(values, values)
def test_two_sample_p_values_in_unit_interval_and_symmetric(a: list[float], b: list[float]) -> None:
    assume(_varied(a) and _varied(b))
    for fn in (stats.welch_t, stats.student_t, stats.mann_whitney_u):
        ab, ba = fn(a, b), fn(b, a)
        assert 0.0 <= ab.p_value <= 1.0
        assert ab.p_value == pytest.approx(ba.p_value, rel=1e-9, abs=1e-12)
    lev_ab, lev_ba = stats.levene(a, b), stats.levene(b, a)
    assert 0.0 <= lev_ab.p_value <= 1.0
    assert lev_ab.p_value == pytest.approx(lev_ba.p_value, rel=1e-9, abs=1e-12)
    assert stats.cohens_d(a, b) == pytest.approx(-stats.cohens_d(b, a))
    r = stats.rank_biserial(a, b)
    assert -1.0 <= r <= 1.0
    assert r == pytest.approx(-stats.rank_biserial(b, a))


@settings(max_examples=60, deadline=None)
@given(values)
def test_paired_tests_symmetric(a: list[float]) -> None:
    b = list(a)
    np.random.default_rng(len(a)).shuffle(b)
    assume(any(x != y for x, y in zip(a, b, strict=True)))
    d = np.array(a) - np.array(b)
    assume(np.ptp(d) > 0)
    for fn in (stats.paired_t, stats.wilcoxon_signed_rank):
        ab, ba = fn(a, b), fn(b, a)
        assert 0.0 <= ab.p_value <= 1.0
        assert ab.p_value == pytest.approx(ba.p_value, rel=1e-9, abs=1e-12)
    assert stats.paired_rank_biserial(a, b) == pytest.approx(-stats.paired_rank_biserial(b, a))


@settings(max_examples=60, deadline=None)
@given(hs.lists(values, min_size=2, max_size=4))
def test_k_sample_tests_ignore_group_order(groups: list[list[float]]) -> None:
    assume(len({v for g in groups for v in g}) > 1)
    assume(all(_varied(g) for g in groups))
    for fn in (stats.one_way_anova, stats.kruskal_wallis):
        fwd, rev = fn(*groups), fn(*reversed(groups))
        assert 0.0 <= fwd.p_value <= 1.0
        assert fwd.p_value == pytest.approx(rev.p_value, rel=1e-9, abs=1e-12)
    eta = stats.eta_squared(*groups)
    assert 0.0 <= eta <= 1.0
    assert stats.omega_squared(*groups) <= eta + 1e-12


@settings(max_examples=100, deadline=None)
@given(p_values)
def test_corrections_monotone_and_ordered(p: list[float]) -> None:
    bon, hol, bh = stats.bonferroni(p), stats.holm(p), stats.benjamini_hochberg(p)
    for c in (bon, hol, bh):
        adj = c.adjusted
        assert all(0.0 <= q <= 1.0 for q in adj)
        assert all(q >= raw - 1e-12 for q, raw in zip(adj, p, strict=True))
        # monotone: a smaller raw p never gets a larger adjusted p
        for i in range(len(p)):
            for j in range(len(p)):
                if p[i] <= p[j]:
                    assert adj[i] <= adj[j] + 1e-12
    # BH <= Holm <= Bonferroni, so rejections nest.
    for b_, h_, f_ in zip(bon.adjusted, hol.adjusted, bh.adjusted, strict=True):
        assert f_ <= h_ + 1e-12 <= b_ + 2e-12
    assert all(h or not b for b, h in zip(bon.reject, hol.reject, strict=True))


@settings(max_examples=40, deadline=None)
@given(hs.floats(0.1, 1.5), hs.integers(3, 200))
def test_power_grows_with_n_and_stays_a_probability(d: float, n: int) -> None:
    p1, p2 = stats.t_test_power(d, n), stats.t_test_power(d, n + 5)
    assert 0.0 <= p1 <= p2 <= 1.0
    assert p1 >= stats.t_test_power(d / 2, n) - 1e-12


@settings(max_examples=30, deadline=None)
@given(hs.lists(hs.sampled_from([0.0, 1.0]), min_size=2, max_size=40))
def test_mcnemar_symmetric(a: list[float]) -> None:
    b = a[::-1]
    assert stats.mcnemar(a, b).p_value == pytest.approx(stats.mcnemar(b, a).p_value)
    assert 0.0 <= stats.mcnemar(a, b).p_value <= 1.0

"""Hedging policies: the delays they plan and what they learn."""

from __future__ import annotations

import math
import random

import pytest
from crucible_hedging import (
    Adaptive,
    Deadline,
    ExponentialBackoff,
    FixedDelay,
    HedgePlan,
    Observation,
    Percentile,
    build_policy,
    percentile,
)
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.errors import ConfigError, NotFound


def observe(policy: Percentile | Adaptive, latency: float) -> None:
    plan = policy.plan()
    policy.observe(Observation(latency=latency, primary_latency=latency, hedges=0, plan=plan))


@given(st.lists(st.floats(0, 10), min_size=1, max_size=200), st.floats(1, 100))
def test_percentile_is_an_observed_value_at_or_above_p_percent(
    values: list[float], p: float
) -> None:
    v = percentile(values, p)
    assert v in values
    assert sum(x <= v for x in values) >= p / 100 * len(values) - 1e-9


def test_fixed_backoff_and_deadline_plans() -> None:
    assert FixedDelay(delay_ms=20).plan() == HedgePlan(delays=[0.02])
    assert ExponentialBackoff(base_ms=10, factor=2, max_hedges=3).plan().delays == pytest.approx(
        [0.01, 0.03, 0.07]
    )
    assert Deadline(deadline_ms=400, hedge_at=0.25).plan() == HedgePlan(delays=[0.1], deadline=0.4)


def test_percentile_follows_the_window() -> None:
    policy = Percentile(p=90, window=10, min_samples=5, initial_delay_ms=50)
    assert policy.plan().delays == [0.05]
    for latency in [0.01] * 9 + [1.0]:
        observe(policy, latency)
    assert policy.plan().delays == [0.01]  # the 90th percentile of ten: the 9th value
    for _ in range(10):
        observe(policy, 0.2)  # the window forgets the old ones
    assert policy.plan().delays == [0.2]


def test_adaptive_picks_the_earliest_delay_the_budget_can_pay_for() -> None:
    """On a body of fast requests with 2 % stragglers at 10x, a 5 % budget can back up
    every straggler only from a late-enough percentile: the bandit settles there."""
    rng = random.Random(0)
    latencies = [
        0.01 * rng.lognormvariate(0, 0.3) * (10 if rng.random() < 0.02 else 1) for _ in range(1000)
    ]
    policy = Adaptive(budget=0.05, seed=1, refresh=1)
    for x in latencies:
        policy.observe(
            Observation(latency=x, primary_latency=x, hedges=0, plan=HedgePlan(delays=[]))
        )
    for _ in range(100):
        policy.plan()
    favourite = max(range(len(policy.plays)), key=policy.plays.__getitem__)
    assert 90 <= policy.candidates[favourite] <= 98
    # Without a budget to respect, the earliest candidate is best.
    free = Adaptive(budget=1.0, seed=1, refresh=1)
    for x in latencies:
        free.observe(Observation(latency=x, primary_latency=x, hedges=0, plan=HedgePlan(delays=[])))
    for _ in range(50):
        free.plan()
    assert max(range(len(free.plays)), key=free.plays.__getitem__) == 0


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("fixed", {"delay_ms": -1}, r"hedging\.delay_ms: must be a finite number >= 0"),
        ("percentile", {"p": 0}, r"hedging\.p: must be a finite number > 0 and <= 100"),
        ("percentile", {"p": math.nan}, r"hedging\.p"),
        ("adaptive", {"candidates": []}, r"hedging\.candidates"),
        ("backoff", {"factor": 0.5}, r"hedging\.factor: must be a finite number >= 1"),
        ("deadline", {"deadline_ms": 0}, r"hedging\.deadline_ms"),
        ("fixed", {"bogus": 1}, r"bad options"),
    ],
)
def test_bad_policy_options_name_the_field(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_policy(name, **options)


def test_unknown_policies_list_the_registered_ones() -> None:
    with pytest.raises(NotFound, match="did you mean 'percentile'"):
        build_policy("percentil")

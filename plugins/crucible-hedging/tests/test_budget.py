"""The hedging budget never lets extra requests exceed its share, whatever the arrival pattern."""

from __future__ import annotations

import math

import pytest
from crucible_hedging import HedgeBudget
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import ConfigError


@settings(max_examples=300)
@given(
    ratio=st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.5, 1.0]),
    window=st.integers(1, 50),
    burst=st.sampled_from([None, 1.0, 3.0, 20.0]),
    events=st.lists(st.sampled_from(["p", "h", "h", "h"]), max_size=400),
)
def test_no_window_of_primaries_exceeds_the_ratio(
    ratio: float, window: int, burst: float | None, events: list[str]
) -> None:
    """Replay any interleaving of primaries and hedge attempts (hedges as greedy as
    possible), then check every stretch of `window` consecutive primaries."""
    budget = HedgeBudget(ratio, window, burst)
    log: list[str] = []  # granted events in order
    for e in events:
        if e == "p":
            budget.primary()
            log.append("p")
        elif budget.try_hedge():
            log.append("h")
    primaries = [i for i, e in enumerate(log) if e == "p"]
    assert budget.hedges == log.count("h") <= ratio * len(primaries) + 1e-9
    # Every stretch of `window` consecutive primaries, with the hedges fired among them,
    # and every stretch from the start (fewer primaries), keeps hedges <= ratio x primaries.
    for k in range(len(primaries)):
        last = k + window - 1
        if last >= len(primaries) and k > 0:
            break  # a tail shorter than a window is part of a full window checked above
        hi = primaries[last + 1] if last + 1 < len(primaries) else len(log)
        span = log[primaries[k] : hi]
        assert span.count("h") <= ratio * span.count("p") + 1e-9


def test_the_bucket_spreads_hedges_out() -> None:
    budget = HedgeBudget(0.1, window=1000, burst=1.0)
    for _ in range(100):
        budget.primary()
    # The window would allow 10 hedges now, but the bucket holds one token.
    assert [budget.try_hedge() for _ in range(3)] == [True, False, False]
    assert budget.denied == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.5}, r"hedging\.budget: must be a fraction in \[0, 1\]"),
        ({"ratio": -0.1}, r"hedging\.budget"),
        ({"ratio": math.nan}, r"hedging\.budget"),
        ({"window": 0}, r"hedging\.window: must be an integer >= 1"),
        ({"burst": math.inf}, r"hedging\.burst: must be a finite number >= 1"),
    ],
)
def test_bad_budgets_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HedgeBudget(**kwargs)  # type: ignore[arg-type]

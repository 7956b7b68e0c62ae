"""Work IR: backoff schedule and the status state machine."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.errors import Conflict
from crucible_core.ir.work import (
    TERMINAL_STATUSES,
    TRANSITIONS,
    RetryPolicy,
    can_transition,
    check_transition,
    next_delay,
)

policies = st.builds(
    lambda backoff, initial, extra, jitter: RetryPolicy(
        backoff=backoff,
        initial_delay_ms=initial,
        max_delay_ms=initial + extra,
        jitter=jitter,
    ),
    st.sampled_from(["exponential", "linear", "constant"]),
    st.integers(0, 10_000),
    st.integers(0, 100_000),
    st.floats(0, 1),
)


@given(policies, st.integers(1, 200), st.integers(0, 2**32))
def test_delay_is_bounded(policy: RetryPolicy, attempt: int, seed: int) -> None:
    d = next_delay(policy, attempt, rng=random.Random(seed))
    assert 0 <= d <= policy.max_delay_ms
    undisturbed = next_delay(policy.__replace__(jitter=0.0), attempt)  # type: ignore[attr-defined]
    assert (1 - policy.jitter) * undisturbed - 1e-9 <= d <= undisturbed + 1e-9


@given(policies, st.integers(1, 100))
def test_delay_without_jitter_is_monotonic(policy: RetryPolicy, attempt: int) -> None:
    p = policy.__replace__(jitter=0.0)  # type: ignore[attr-defined]
    assert next_delay(p, attempt) <= next_delay(p, attempt + 1)


@given(policies, st.integers(1, 100), st.integers(0, 2**32))
def test_delay_is_reproducible_with_a_seeded_rng(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    a = next_delay(policy, attempt, rng=random.Random(seed))
    b = next_delay(policy, attempt, rng=random.Random(seed))
    assert a == b


def test_delay_schedules() -> None:
    exp = RetryPolicy(initial_delay_ms=100, max_delay_ms=1000)
    assert [next_delay(exp, a) for a in range(1, 6)] == [100, 200, 400, 800, 1000]
    lin = RetryPolicy(backoff="linear", initial_delay_ms=100, max_delay_ms=250)
    assert [next_delay(lin, a) for a in range(1, 4)] == [100, 200, 250]
    const = RetryPolicy(backoff="constant", initial_delay_ms=70)
    assert {next_delay(const, a) for a in range(1, 5)} == {70}
    assert next_delay(exp, 10_000) == 1000
    with pytest.raises(ValueError, match="attempt counts from 1"):
        next_delay(exp, 0)


_statuses = st.sampled_from(sorted(TRANSITIONS))


@given(st.lists(_statuses, max_size=30))
def test_walks_through_the_machine_never_leave_a_terminal_state_except_by_retry(
    path: list[str],
) -> None:
    current = "pending"
    for target in path:
        if can_transition(current, target):
            if current in TERMINAL_STATUSES:
                assert target == "queued"
            current = target
        else:
            with pytest.raises(Conflict):
                check_transition(current, target)


def test_machine_shape() -> None:
    assert TRANSITIONS["succeeded"] == frozenset()
    assert all(s in TRANSITIONS for s in TERMINAL_STATUSES)
    for src, targets in TRANSITIONS.items():
        assert src not in targets, f"{src} -> itself is not a transition"
        assert targets <= set(TRANSITIONS)
    with pytest.raises(Conflict) as info:
        check_transition("succeeded", "running")
    assert info.value.hint == "from 'succeeded' it may go to: none"


def test_retry_policy_refuses_cap_below_initial() -> None:
    from crucible_core.errors import ValidationError
    from crucible_core.ir.codec import convert

    with pytest.raises(ValidationError, match="max_delay_ms"):
        convert({"initial_delay_ms": 10, "max_delay_ms": 5}, RetryPolicy)

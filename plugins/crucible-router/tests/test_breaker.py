"""The circuit breaker's state machine on an injected clock, by example and by property."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from crucible_router import CircuitBreaker, Permit
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def permit(b: CircuitBreaker) -> Permit:
    p = b.allow()
    assert p is not None, f"the breaker refused a call in state {b.state}"
    return p


def test_opens_after_n_consecutive_failures_and_recovers_on_schedule() -> None:
    clock = Clock()
    changes: list[tuple[str, str]] = []
    b = CircuitBreaker(
        failure_threshold=3,
        cooldown_s=10,
        clock=clock,
        on_change=lambda o, n, i: changes.append((o, n)),
    )
    for _ in range(2):
        b.record_failure(permit(b))
    assert b.state == "closed"
    b.record_success(permit(b))  # a success resets the consecutive count
    for _ in range(3):
        b.record_failure(permit(b))
    assert b.state == "open"
    assert changes == [("closed", "open")]
    clock.now = 9.999
    assert b.allow() is None
    assert b.retry_in() == pytest.approx(0.001)
    clock.now = 10.0
    probe = permit(b)
    assert probe.probe
    assert b.state == "half_open"
    assert b.allow() is None  # only one probe at a time
    b.record_success(probe)
    assert b.state == "closed"
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert b.allow() is not None


def test_a_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, cooldown_s=5, clock=clock)
    b.record_failure(permit(b))
    clock.now = 5
    b.record_failure(permit(b))
    assert b.state == "open"
    clock.now = 9.9
    assert b.allow() is None
    clock.now = 10
    assert permit(b).probe
    assert b.snapshot()["opens"] == 2


def test_open_for_sets_the_probe_time() -> None:
    clock = Clock()
    b = CircuitBreaker(cooldown_s=30, clock=clock)
    b.open_for(5, "from the state file")
    assert b.state == "open"
    clock.now = 4.9
    assert b.allow() is None
    clock.now = 5
    assert permit(b).probe


def test_release_frees_the_probe_slot_without_closing() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, cooldown_s=1, clock=clock)
    b.record_failure(permit(b))
    clock.now = 1
    b.release(permit(b))
    assert b.state == "half_open"
    assert permit(b).probe


def test_a_stale_call_cannot_decide_the_half_open_state() -> None:
    """A call let through while closed that ends during half-open neither closes the
    breaker nor frees the probe slot (a second probe would then run)."""
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, cooldown_s=1, clock=clock)
    slow = permit(b)
    b.record_failure(permit(b))
    clock.now = 1
    probe = permit(b)
    b.record_success(slow)
    assert b.state == "half_open"
    assert b.allow() is None
    b.record_failure(probe)
    assert b.state == "open"


def test_error_rate_over_the_window_opens() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=100, error_rate=0.5, window_s=10, min_calls=4, clock=clock)
    for failed in [True, False, True]:  # 2 failures of 3: below min_calls
        (b.record_failure if failed else b.record_success)(permit(b))
    assert b.state == "closed"
    b.record_failure(permit(b))  # 3 of 4 = 75 %
    assert b.state == "open"


def test_outcomes_older_than_the_window_do_not_count() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=100, error_rate=0.5, window_s=10, min_calls=4, clock=clock)
    for _ in range(3):
        b.record_failure(permit(b))
    clock.now = 10.5  # those three have left the window
    for _ in range(3):
        b.record_success(permit(b))
    b.record_failure(permit(b))
    assert b.state == "closed"
    assert b.snapshot()["window_calls"] == 4


@pytest.mark.parametrize(
    "options",
    [{"failure_threshold": 0}, {"error_rate": 1.5}, {"window_s": 0}, {"cooldown_s": -1}],
)
def test_bad_options_are_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        CircuitBreaker(**options)


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(min_value=0, max_value=20)),
        st.tuples(st.just("call"), st.sampled_from(["ok", "fail", "neutral"])),
        st.tuples(st.just("start"), st.just("")),  # a call that has not ended yet
        st.tuples(st.just("end"), st.sampled_from(["ok", "fail", "neutral"])),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=_ops,
    threshold=st.integers(1, 4),
    cooldown=st.floats(0.5, 15),
    rate=st.one_of(st.none(), st.floats(0.2, 1.0)),
)
def test_transitions_keep_the_breaker_rules(
    ops: list[tuple[str, Any]], threshold: int, cooldown: float, rate: float | None
) -> None:
    """Never calls an open member before its cool-down; exactly one half-open probe at a time
    (the first call after the cool-down gets it); every state change is a legal edge; the
    probe's outcome decides the next state."""
    clock = Clock()
    edges: list[tuple[str, str]] = []
    b = CircuitBreaker(
        failure_threshold=threshold,
        error_rate=rate,
        window_s=30,
        min_calls=3,
        cooldown_s=cooldown,
        clock=clock,
        on_change=lambda o, n, i: edges.append((o, n)),
    )
    opened_at: float | None = None
    in_flight: list[Permit] = []

    def finish(p: Permit, outcome: str) -> None:
        nonlocal opened_at
        before = b.state
        {"ok": b.record_success, "fail": b.record_failure, "neutral": b.release}[outcome](p)
        if p.probe and outcome == "ok":
            assert b.state == "closed"
        if p.probe and outcome == "fail":
            assert b.state == "open"
        if p.probe and outcome == "neutral":
            assert b.state == "half_open"
        if b.state == "open" and (before != "open" or p.probe):
            opened_at = clock.now

    for op, arg in ops:
        if op == "advance":
            clock.now += arg
            continue
        if op == "end":
            if in_flight:
                finish(in_flight.pop(0), arg)
            continue
        state = b.state
        probe_running = any(p.probe for p in in_flight)
        p = b.allow()
        if state == "open":
            assert opened_at is not None
            due = clock.now >= opened_at + cooldown
            assert (p is not None) == (due and not probe_running)
        if state == "half_open":
            assert (p is not None) == (not probe_running)
        if state == "closed":
            assert p is not None
            assert not p.probe
        if p is not None and p.probe:
            assert not probe_running, "a second probe while one is in flight"
        if p is None:
            continue
        if op == "start":
            in_flight.append(p)
        else:
            finish(p, arg)
    legal = {
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("half_open", "open"),
    }
    assert set(edges) <= legal
    for (_, new), (old, _) in itertools.pairwise(edges):
        assert new == old

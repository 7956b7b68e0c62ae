"""The ``routed`` backend: fail-over, breakers on schedule, training pinned, events, conformance.

Members are simulated (``conftest.Scripted``): their failures are scripted because a real
backend cannot be made to fail or run out of capacity on cue.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from crucible_router import BreakerStateFile, RoutedBackend
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import (
    BackendError,
    CapacityError,
    ConfigError,
    DeadlineExceeded,
    UnsupportedError,
)
from crucible_core.ir import Prompt, SamplingParams
from crucible_core.testing import check_inference_backend

from .conftest import Clock, Recorder, Scripted

P = Prompt(text="Hello")
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


def route(*members: Scripted, clock: Clock, **options: object) -> RoutedBackend:
    primary, *fallbacks = members
    return RoutedBackend(primary, fallbacks, clock=clock, **options)  # type: ignore[arg-type]


def test_fallback_answers_when_the_primary_is_down(clock: Clock, recorder: Recorder) -> None:
    a = Scripted("a", clock, then=BackendError("down", retryable=True))
    b = Scripted("b", clock)
    r = route(a, b, clock=clock, bus=recorder.bus, job_id="j1")
    out = r.complete(P, GREEDY)
    assert out.backend_id == "b"
    assert (a.calls, b.calls) == (1, 1)
    (ev,) = recorder.events("route.fallback")
    assert ev.job_id == "j1"
    assert ev.data["backend"] == "b"
    assert ev.data["op"] == "complete"
    (skip,) = ev.data["skipped"]
    assert skip["backend"] == "a"
    assert "BackendError: down" in skip["reason"]


@pytest.mark.parametrize(
    "error",
    [CapacityError("busy"), DeadlineExceeded("slow"), ConnectionError("reset")],
    ids=["capacity", "deadline", "not-a-crucible-error"],
)
def test_retryable_failures_fail_over(clock: Clock, error: Exception) -> None:
    r = route(Scripted("a", clock, [error]), Scripted("b", clock), clock=clock)
    assert r.complete(P, GREEDY).backend_id == "b"


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("bad prompt"),
        UnsupportedError("no logprobs"),
        BackendError("prompt too long", retryable=False),
    ],
    ids=["config", "unsupported", "non-retryable"],
)
def test_request_errors_are_not_failed_over(clock: Clock, error: Exception) -> None:
    a, b = Scripted("a", clock, [error]), Scripted("b", clock)
    r = route(a, b, clock=clock, failure_threshold=1)
    with pytest.raises(type(error)):
        r.complete(P, GREEDY)
    assert b.calls == 0
    assert r.members[0].breaker.state == "closed"  # the request's fault, not the backend's


def test_capacity_error_reason_is_named(clock: Clock, recorder: Recorder) -> None:
    r = route(
        Scripted("a", clock, [CapacityError("429")]), Scripted("b", clock),
        clock=clock, bus=recorder.bus,
    )  # fmt: skip
    r.complete(P, GREEDY)
    (ev,) = recorder.events("route.fallback")
    assert ev.data["skipped"][0]["reason"].startswith("over capacity")


def test_breaker_opens_and_recovers_on_schedule(clock: Clock, recorder: Recorder) -> None:
    down = BackendError("down", retryable=True)
    a = Scripted("a", clock, [down, down, down], then=None)
    b = Scripted("b", clock)
    r = route(a, b, clock=clock, failure_threshold=3, cooldown_s=30, bus=recorder.bus)
    for _ in range(3):
        assert r.complete(P, GREEDY).backend_id == "b"
    assert a.calls == 3
    assert r.members[0].breaker.state == "open"
    clock.advance(29.9)
    assert r.complete(P, GREEDY).backend_id == "b"
    assert a.calls == 3  # open: not called before the cool-down
    assert "circuit open" in recorder.events("route.fallback")[-1].data["skipped"][0]["reason"]
    clock.advance(0.1)
    assert r.complete(P, GREEDY).backend_id == "a"  # the half-open probe succeeds
    assert a.calls == 4
    assert r.members[0].breaker.state == "closed"
    kinds = [e.kind for e in recorder.events() if e.kind.startswith("breaker.")]
    assert kinds == ["breaker.open", "breaker.half_open", "breaker.closed"]
    opened = recorder.events("breaker.open")[0]
    assert opened.data["backend"] == "a"
    assert "3 consecutive failures" in opened.data["reason"]


def test_a_failed_probe_keeps_the_member_out_for_another_cooldown(clock: Clock) -> None:
    down = BackendError("down", retryable=True)
    a = Scripted("a", clock, then=down)
    r = route(a, Scripted("b", clock), clock=clock, failure_threshold=1, cooldown_s=10)
    r.complete(P, GREEDY)
    clock.advance(10)
    r.complete(P, GREEDY)  # probe fails
    assert a.calls == 2
    clock.advance(9)
    r.complete(P, GREEDY)
    assert a.calls == 2
    assert r.metrics()["a.opens"] == 2


def test_error_rate_threshold_opens_the_breaker(clock: Clock) -> None:
    down = BackendError("down", retryable=True)
    a = Scripted("a", clock, [None, down, None, down, down])
    r = route(
        a, Scripted("b", clock), clock=clock,
        failure_threshold=100, error_rate=0.5, min_calls=4, window_s=60,
    )  # fmt: skip
    for _ in range(4):
        r.complete(P, GREEDY)
    assert r.members[0].breaker.state == "open"  # 2 failures of 4 = 50 %
    r.complete(P, GREEDY)
    assert a.calls == 4


def test_all_down_is_a_retryable_backend_error_naming_each(clock: Clock) -> None:
    down = BackendError("down", retryable=True)
    r = route(Scripted("a", clock, then=down), Scripted("b", clock, then=down), clock=clock)
    with pytest.raises(BackendError) as info:
        r.complete(P, GREEDY)
    assert info.value.retryable
    assert "a (failed" in info.value.message
    assert "b (failed" in info.value.message
    assert r.metrics()["failed"] == 1


def test_a_training_call_is_never_failed_over(clock: Clock) -> None:
    a = Scripted("a", clock, [BackendError("lost the GPU", retryable=True)])
    b = Scripted("b", clock)
    r = route(a, b, clock=clock)
    with pytest.raises(BackendError) as info:
        r.create_session(object())
    assert a.training_calls == ["create_session"]
    assert b.training_calls == []
    assert "never moved to another backend" in info.value.message
    assert info.value.retryable  # the same backend may be retried
    assert r.create_session(object()) == "session on a"
    assert b.training_calls == []


def test_training_goes_to_the_primary_even_when_its_breaker_is_open(clock: Clock) -> None:
    down = BackendError("down", retryable=True)
    a = Scripted("a", clock, [down, None])
    r = route(a, Scripted("b", clock), clock=clock, failure_threshold=1)
    assert r.complete(P, GREEDY).backend_id == "b"
    assert r.members[0].breaker.state == "open"
    assert r.create_session(object()) == "session on a"


def test_unknown_attributes_are_attribute_errors(clock: Clock) -> None:
    r = route(Scripted("a", clock), clock=clock)
    assert not hasattr(r, "no_such_method")


def test_a_member_that_cannot_be_created_is_skipped_with_its_reason(
    clock: Clock, recorder: Recorder
) -> None:
    """By name through the real plugin host: ``no-such-backend`` is not registered."""
    r = RoutedBackend("no-such-backend", [Scripted("b", clock)], clock=clock, bus=recorder.bus)
    assert r.home.name == "b"
    assert r.complete(P, GREEDY).backend_id == "b"
    (ev,) = recorder.events("route.fallback")
    assert ev.data["skipped"][0]["backend"] == "no-such-backend"
    assert ev.data["skipped"][0]["reason"].startswith("unavailable")
    assert r.metrics()["no-such-backend.state"] == -1


def test_no_member_created_is_an_error() -> None:
    with pytest.raises(BackendError, match="no backend of the route could be created"):
        RoutedBackend("no-such-backend", ["nor-this-one"])


def test_a_malformed_member_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"router.fallbacks\[0\]"):
        RoutedBackend(Scripted("a"), [{"nme": "x"}])
    with pytest.raises(ConfigError, match="list of backends"):
        RoutedBackend(Scripted("a"), "b")  # type: ignore[arg-type]


def test_stream_fails_over_before_the_first_chunk(clock: Clock) -> None:
    r = route(Scripted("a", clock, [CapacityError("busy")]), Scripted("b", clock), clock=clock)
    chunks = list(r.stream(P, GREEDY))
    assert "".join(c.text for c in chunks).startswith("b answers")


def test_sample_fails_over(clock: Clock) -> None:
    r = route(Scripted("a", clock, [CapacityError("busy")]), Scripted("b", clock), clock=clock)
    (c,) = r.sample(P, SamplingParams(max_tokens=4)).result()
    assert c.backend_id == "b"


def test_routed_keeps_the_inference_contract(clock: Clock) -> None:
    check_inference_backend(route(Scripted("a", clock), Scripted("b", clock), clock=clock))


def test_health_and_metrics_show_breaker_state(clock: Clock) -> None:
    down = BackendError("down", retryable=True)
    r = route(Scripted("a", clock, then=down), Scripted("b", clock), clock=clock,
              failure_threshold=1)  # fmt: skip
    r.complete(P, GREEDY)
    m = r.metrics()
    assert (m["a.state"], m["b.state"]) == (2.0, 0.0)
    assert (m["requests"], m["fallbacks"]) == (1.0, 1.0)
    health = r.health_check()
    assert health.ok
    assert "a: open" in health.detail


def test_composes_with_hedging_and_ensembles(clock: Clock) -> None:
    """A routed backend inside ``hedged`` and ``ensemble`` (the real plugins), and a hedged
    backend as a routed member: fail-over happens inside each composition."""
    from crucible_ensemble import EnsembleBackend
    from crucible_hedging import FixedDelay, HedgedBackend

    down = BackendError("down", retryable=True)
    b = Scripted("b", clock)
    routed = route(Scripted("a", clock, then=down), b, clock=clock)
    hedged = HedgedBackend(routed, FixedDelay(delay_ms=10_000), budget=0.0)
    assert hedged.complete(P, GREEDY).backend_id == "b"
    b2 = Scripted("b", clock)
    routed2 = route(Scripted("a", clock, then=down), b2, clock=clock)
    ens = EnsembleBackend([routed2, Scripted("b", clock)], strategy="majority", mode="sequential")
    voted = ens.complete(P, GREEDY)
    assert voted.text == "b answers this prompt"
    assert b2.calls == 1  # the routed member answered through its fallback
    x = Scripted("x", clock, then=down)
    outer = RoutedBackend(
        HedgedBackend(x, FixedDelay(delay_ms=10_000), budget=0.0), [routed], clock=clock
    )
    assert outer.complete(P, GREEDY).backend_id == "b"
    assert x.calls == 1


def test_an_interrupted_probe_frees_the_slot(clock: Clock) -> None:
    """KeyboardInterrupt in a half-open probe is raised and does not leave the member
    stuck with a probe that never ends."""
    down = BackendError("down", retryable=True)
    a = Scripted("a", clock, [down, KeyboardInterrupt(), None])
    r = route(a, Scripted("b", clock), clock=clock, failure_threshold=1, cooldown_s=5)
    r.complete(P, GREEDY)
    clock.advance(5)
    with pytest.raises(KeyboardInterrupt):
        r.complete(P, GREEDY)
    assert r.complete(P, GREEDY).backend_id == "a"
    assert r.members[0].breaker.state == "closed"


def test_state_file_and_backends_status(clock: Clock, tmp_path: Path) -> None:
    """Breaker changes reach the SQLite file; ``crucible backends status`` (a real subprocess)
    reads them back, as text and as JSON."""
    db = tmp_path / "router.db"
    down = BackendError("down", retryable=True)
    r = route(Scripted("a", clock, then=down), Scripted("b", clock), clock=clock,
              failure_threshold=2, cooldown_s=600, state_file=str(db))  # fmt: skip
    r.complete(P, GREEDY)
    r.complete(P, GREEDY)
    rows = {row["backend"]: row for row in BreakerStateFile(db).read()}
    assert rows["a"]["state"] == "open"
    assert "2 consecutive failures" in rows["a"]["reason"]
    env_home = {"CRUCIBLE_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "crucible_core.cli.main", "backends", "status"]
    import os

    env = {**os.environ, **env_home}
    out = subprocess.run([*cmd, "--json", "--file", str(db)], capture_output=True, text=True,
                         env=env, timeout=60, check=True)  # fmt: skip
    data = json.loads(out.stdout)
    (row,) = data["backends"]
    assert row["backend"] == "a"
    assert row["state"] == "open"
    assert 590 < row["retry_in_s"] <= 600
    text = subprocess.run([*cmd, "--file", str(db)], capture_output=True, text=True, env=env,
                          timeout=60, check=True).stdout  # fmt: skip
    assert "a" in text
    assert "open" in text
    assert "probe in" in text
    empty = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=True)
    assert "no breaker state recorded" in empty.stdout


def test_a_new_router_starts_with_the_breakers_the_state_file_records_open(
    clock: Clock, tmp_path: Path, recorder: Recorder
) -> None:
    """Two routers sharing one SQLite file: the second does not call a member the first
    found down until the recorded probe time, then probes it and records it closed."""
    db = str(tmp_path / "router.db")
    down = BackendError("down", retryable=True)
    first = route(Scripted("a", clock, then=down), Scripted("b", clock), clock=clock,
                  failure_threshold=1, cooldown_s=600, state_file=db)  # fmt: skip
    first.complete(P, GREEDY)
    clock2 = Clock()
    a2 = Scripted("a", clock2)
    second = route(a2, Scripted("b", clock2), clock=clock2, cooldown_s=600, state_file=db,
                   bus=recorder.bus)  # fmt: skip
    assert second.members[0].breaker.state == "open"
    assert 590 < second.members[0].breaker.retry_in() <= 600
    assert second.complete(P, GREEDY).backend_id == "b"
    assert a2.calls == 0
    clock2.advance(600)
    assert second.complete(P, GREEDY).backend_id == "a"
    rows = {row["backend"]: row["state"] for row in BreakerStateFile(db).read()}
    assert rows["a"] == "closed"
    third = route(Scripted("a", clock), clock=clock, state_file=db)
    assert third.members[0].breaker.state == "closed"


@settings(max_examples=150, deadline=None)
@given(
    outcomes=st.lists(st.lists(st.booleans(), min_size=3, max_size=3), max_size=40),
    gaps=st.lists(st.floats(0, 12), min_size=40, max_size=40),
)
def test_routing_rules_hold_for_any_failure_pattern(
    outcomes: list[list[bool]], gaps: list[float]
) -> None:
    """For any pattern of member failures and request spacing: an open member is never
    called before its cool-down, the answer comes from the first member that was let
    through and did not fail, and a request fails only when every member failed or was
    skipped."""
    clock = Clock()
    down = BackendError("down", retryable=True)
    scripts: list[list[object]] = [[], [], []]
    members = [Scripted(n, clock, s, then=None) for n, s in zip("abc", scripts, strict=True)]
    r = route(*members, clock=clock, failure_threshold=2, cooldown_s=10)
    for step, fails in enumerate(outcomes):
        clock.advance(gaps[step])
        for m, fail in zip(members, fails, strict=True):
            del m.script[:]
            m.calls = 0
            m.then = down if fail else None
        before = [(mm.breaker.state, mm.breaker.retry_in()) for mm in r.members]
        try:
            answer: str | None = r.complete(P, GREEDY).backend_id
        except BackendError:
            answer = None
        called = [m.calls for m in members]
        for (state, wait), n in zip(before, called, strict=True):
            if state == "open" and wait > 0:
                assert n == 0, "an open member was called before its cool-down"
        if answer is None:
            assert all(n == 0 or f for n, f in zip(called, fails, strict=True))
        else:
            i = "abc".index(answer)
            assert called[i] == 1
            assert not fails[i]
            assert all(n == 0 or f for n, f in zip(called[:i], fails[:i], strict=True))
            assert called[i + 1 :] == [0] * (2 - i)

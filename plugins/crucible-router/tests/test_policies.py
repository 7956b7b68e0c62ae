"""Routing policies: adaptive (Thompson sampling) converges, round-robin rotates, the
policy is pluggable through ``register_routing_policies``, training stays home.

Members are ``SimulatedBackend``s on an injected clock with seeded RNGs: a real provider
cannot be made slow, flaky or expensive on cue. The policy and router are the real ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

import crucible_router.plugin
import pytest
from crucible_router import RoutedBackend
from crucible_router.policies import AdaptivePolicy
from crucible_router.simulated import FakeClock, SimulatedBackend

from crucible_core import RegisterRoutingPolicy, hookimpl
from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir import Prompt, SamplingParams
from crucible_core.testing import isolated_host

from .conftest import Scripted

P = Prompt(text="Hello")
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


def answers(router: RoutedBackend, n: int) -> list[str]:
    """The member that answered each of ``n`` requests (``!`` when none did)."""
    out = []
    for _ in range(n):
        try:
            out.append(router.complete(P, GREEDY).backend_id)
        except Exception:
            out.append("!")
    return out


def three(clock: FakeClock) -> list[SimulatedBackend]:
    """a: slow (0.30 s); b: fast and reliable (0.10 s, 2 %); c: fast but flaky (0.12 s, 30 %)."""
    return [
        SimulatedBackend("a", clock, latency_s=0.30, error_rate=0.05, seed=1),
        SimulatedBackend("b", clock, latency_s=0.10, error_rate=0.02, seed=2),
        SimulatedBackend("c", clock, latency_s=0.12, error_rate=0.30, seed=3),
    ]


def test_adaptive_converges_on_the_best_member_within_100_requests() -> None:
    """Stated bound: after 100 requests, >= 90 % of the next 200 go first to ``b`` (best
    on latency and errors), though the configured primary is the slow ``a``."""
    clock = FakeClock()
    a, b, c = three(clock)
    r = RoutedBackend(a, [b, c], clock=clock, policy=AdaptivePolicy(seed=7), max_attempts=1)
    answers(r, 100)
    first_b = b.calls
    later = answers(r, 200)
    assert (b.calls - first_b) / 200 >= 0.90, Counter(later)
    assert r.policy.estimates()["b"]["loss"] < r.policy.estimates()["a"]["loss"]


def test_adaptive_by_name_through_the_hook_with_options() -> None:
    clock = FakeClock()
    a, b, c = three(clock)
    with isolated_host(crucible_router.plugin):
        r = RoutedBackend(a, [b, c], clock=clock, policy="adaptive", policy_options={"seed": 3})
    assert isinstance(r.policy, AdaptivePolicy)
    answers(r, 200)
    assert b.calls > a.calls + c.calls


def test_the_cost_objective_picks_the_cheapest_equivalent_member() -> None:
    """Same latency and errors; prices from ``Capabilities.costs``. With cost in the
    objective, >= 90 % of requests 51..250 go to the cheapest."""
    clock = FakeClock()
    prices = {"x": 2.0, "y": 0.2, "z": 1.0}
    members = [
        SimulatedBackend(n, clock, latency_s=0.1, sample_per_mtok=p, prompt_per_mtok=p, seed=i)
        for i, (n, p) in enumerate(prices.items())
    ]
    policy = AdaptivePolicy(latency=1.0, errors=1.0, cost=1.0, seed=1)
    r = RoutedBackend(members[0], members[1:], clock=clock, policy=policy)
    answers(r, 50)
    later = Counter(answers(r, 200))
    assert later["y"] >= 180, later
    # cost per 1k requests = 1000 * (200 prompt + 8 completion tokens) * $0.2/Mtok
    assert policy.estimates()["y"]["cost_per_1k"] == pytest.approx(0.0416)


def test_fed_back_quality_steers_the_route() -> None:
    """Identical profiles; an evaluator scores ``q2``'s answers 0.9 and ``q1``'s 0.3."""
    clock = FakeClock()
    q1 = SimulatedBackend("q1", clock, latency_s=0.1, seed=1)
    q2 = SimulatedBackend("q2", clock, latency_s=0.1, seed=2)
    r = RoutedBackend(q1, [q2], clock=clock, policy=AdaptivePolicy(quality=1.0, seed=5))
    picks = []
    for _ in range(150):
        out = r.complete(P, GREEDY)
        r.feedback(out, 0.9 if out.backend_id == "q2" else 0.3)
        picks.append(out.backend_id)
    assert Counter(picks[50:])["q2"] >= 90, Counter(picks[50:])
    with pytest.raises(NotFound):
        r.feedback("nobody", 1.0)


def test_decay_notices_a_member_that_degrades() -> None:
    """``b`` turns slow (1 s) after 200 requests: within 100 more, ``c`` takes over."""
    clock = FakeClock()
    b = SimulatedBackend("b", clock, latency_s=0.10, seed=1)
    c = SimulatedBackend("c", clock, latency_s=0.20, seed=2)
    r = RoutedBackend(b, [c], clock=clock, policy=AdaptivePolicy(seed=2, decay=0.98))
    assert Counter(answers(r, 200)[50:])["b"] >= 135
    b.latency_s = 1.0
    answers(r, 100)
    assert Counter(answers(r, 100))["c"] >= 90


def test_the_same_seed_routes_the_same_way() -> None:
    def run() -> list[str]:
        clock = FakeClock()
        a, b, c = three(clock)
        return answers(RoutedBackend(a, [b, c], clock=clock, policy=AdaptivePolicy(seed=11)), 80)

    assert run() == run()


def test_round_robin_rotates_the_first_member() -> None:
    clock = FakeClock()
    members = [SimulatedBackend(n, clock) for n in "abc"]
    with isolated_host(crucible_router.plugin):
        r = RoutedBackend(members[0], members[1:], clock=clock, policy="round_robin")
    assert answers(r, 6) == ["a", "b", "c", "a", "b", "c"]


def test_a_failing_adaptive_pick_still_falls_back() -> None:
    """Whatever the policy picks first, the rest of the route is the fallback chain."""
    clock = FakeClock()
    down = SimulatedBackend("down", clock, error_rate=1.0)
    up = SimulatedBackend("up", clock, latency_s=5.0)  # slower, so not preferred on latency
    r = RoutedBackend(
        down, [up], clock=clock, policy=AdaptivePolicy(seed=0), failure_threshold=1000
    )
    assert set(answers(r, 30)) == {"up"}


class Reverse:
    """A third-party policy: the route backwards."""

    seen: ClassVar[list[tuple[str, bool]]] = []

    def order(self, members: Sequence[str]) -> list[str]:
        return list(reversed(members))

    def observe(self, member: str, *, latency_s: float, failed: bool, cost: float) -> None:
        Reverse.seen.append((member, failed))


class ReversePlugin:
    @hookimpl
    def register_routing_policies(self, register: RegisterRoutingPolicy) -> None:
        register("reverse", Reverse, summary="the route backwards")


def test_a_policy_registered_by_another_plugin_is_used_by_name() -> None:
    clock = FakeClock()
    a, b = SimulatedBackend("a", clock), SimulatedBackend("b", clock)
    Reverse.seen = []
    with isolated_host(crucible_router.plugin, ReversePlugin()) as host:
        assert "reverse" in host.registrations("routing_policy")
        r = RoutedBackend(a, [b], clock=clock, policy="reverse")
    assert r.complete(P, GREEDY).backend_id == "b"
    assert Reverse.seen == [("b", False)]


def test_bad_policies_are_config_errors_and_unknown_names_not_found() -> None:
    with pytest.raises(ConfigError, match="has no order"):
        RoutedBackend(Scripted("a"), policy=object())
    with pytest.raises(ConfigError, match="decay"):
        AdaptivePolicy(decay=0)
    with isolated_host(crucible_router.plugin), pytest.raises(NotFound):
        RoutedBackend(Scripted("a"), policy="no-such-policy")


def test_training_stays_home_whatever_the_policy_prefers() -> None:
    clock = FakeClock()
    home = Scripted("home", then=5.0)  # slow: the policy routes inference away from it
    other = Scripted("other")
    home.clock = other.clock = clock  # type: ignore[assignment]
    r = RoutedBackend(home, [other], clock=clock, policy=AdaptivePolicy(seed=1, warmup=1))
    answers(r, 20)
    assert other.calls > home.calls
    assert r.create_session(None) == "session on home"
    assert home.training_calls == ["create_session"]
    assert other.training_calls == []


def test_policy_estimates_reach_metrics() -> None:
    clock = FakeClock()
    a, b, c = three(clock)
    r = RoutedBackend(a, [b, c], clock=clock, policy=AdaptivePolicy(seed=0))
    answers(r, 30)
    m = r.metrics()
    assert m["policy.b.latency_s"] == pytest.approx(0.10, rel=0.3)
    assert m["policy.a.loss"] > m["policy.b.loss"]


def test_an_adaptive_route_composes_with_hedging_and_ensembles() -> None:
    """An adaptive route inside ``hedged`` and as an ``ensemble`` member (the real plugins):
    it answers from the member it learned to prefer."""
    from crucible_ensemble import EnsembleBackend
    from crucible_hedging import FixedDelay, HedgedBackend

    clock = FakeClock()
    a, b, c = three(clock)
    for m in (a, b, c):
        m.error_rate = 0.0
    r = RoutedBackend(a, [b, c], clock=clock, policy=AdaptivePolicy(seed=4, exploration=0.0))
    answers(r, 30)
    hedged = HedgedBackend(r, FixedDelay(delay_ms=10_000), budget=0.0)
    assert hedged.complete(P, GREEDY).backend_id == "b"
    ens = EnsembleBackend([r, b], strategy="majority", mode="sequential")
    assert ens.complete(P, GREEDY).text == b.complete(P, GREEDY).text

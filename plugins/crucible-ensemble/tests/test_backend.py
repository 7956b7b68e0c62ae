"""EnsembleBackend: modes, early stop, quorum, deadlines, bad input, composition."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from crucible_ensemble import EnsembleBackend, QuorumError

from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir import Prompt, SamplingParams
from crucible_core.testing import check_inference_backend

P = Prompt(text="What is 2+2?")
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
Make = Callable[..., Any]


def test_parallel_majority_reports_members_usage_and_cost(scripted: Make) -> None:
    members = [
        scripted("a", "4", price=2.0),
        scripted("b", "four is 4", price=1.0),
        scripted("c", "4", price=2.0),
    ]
    ens = EnsembleBackend(members, "majority", early_stop=False)
    result = ens.run(P, GREEDY)
    assert (result.answer, result.text) == ("4", "4")
    assert result.agreement == pytest.approx(2 / 3)
    assert result.failed == {}
    assert [o.member for o in result.outcomes] == ["a", "b", "c"]
    assert all(o.status == "ok" for o in result.outcomes)
    assert result.usage.completion_tokens == 1 + 3 + 1
    assert result.cost == pytest.approx((1 * 2.0 + 3 * 1.0 + 1 * 2.0) / 1e6)
    completion = ens.complete(P, GREEDY)
    assert (completion.text, completion.backend_id, len(completion.tokens)) == ("4", "ensemble", 1)


def test_the_ensemble_passes_the_inference_conformance_kit(scripted: Make) -> None:
    ens = EnsembleBackend([scripted("a", "hello there"), scripted("b", "hello there")])
    check_inference_backend(ens, timeout=10)
    assert ens.metrics()["requests"] >= 2


def test_truncation_keeps_the_winner_s_finish_reason(scripted: Make) -> None:
    ens = EnsembleBackend([scripted("a", "one two three"), scripted("b", "one two three")])
    c = ens.complete(P, SamplingParams(max_tokens=2, temperature=0.0))
    assert (c.text, c.finish_reason) == ("one two", "length")


def test_parallel_early_stop_does_not_wait_for_stragglers(scripted: Make) -> None:
    fast = [scripted(f"f{i}", "4") for i in range(3)]
    slow = [scripted(f"s{i}", "5", delay=3.0) for i in range(2)]
    ens = EnsembleBackend([*fast, *slow], "majority")
    t0 = time.monotonic()
    result = ens.run(P, GREEDY)
    assert time.monotonic() - t0 < 2.0
    assert result.answer == "4"
    assert result.early_stopped
    assert result.cancelled == ["s0", "s1"]
    assert {o.member: o.status for o in result.outcomes}["s0"] == "cancelled"


def test_sequential_early_stop_saves_calls(scripted: Make) -> None:
    members = [scripted(f"m{i}", "4") for i in range(5)]
    result = EnsembleBackend(members, "majority", mode="sequential").run(P, GREEDY)
    assert result.member_calls == 3  # 3 - 0 > the 2 pending
    assert [m.calls for m in members] == [1, 1, 1, 0, 0]
    waited = EnsembleBackend(members, "majority", mode="sequential", early_stop=False).run(
        P, GREEDY
    )
    assert waited.answer == result.answer
    assert waited.member_calls == 5


def test_cascade_asks_cheap_members_first_and_escalates_on_disagreement(scripted: Make) -> None:
    cheap = [scripted("c1", "4", price=0.1), scripted("c2", "4", price=0.2)]
    dear = scripted("d", "4", price=10.0)
    result = EnsembleBackend([dear, *cheap], mode="cascade", quorum=1).run(P, GREEDY)
    assert dear.calls == 0
    assert result.cancelled == ["d"]
    split = [scripted("c1", "4", price=0.1), scripted("c2", "5", price=0.2)]
    judge = scripted("d", "5", price=10.0)
    result = EnsembleBackend([judge, *split], mode="cascade", quorum=1).run(P, GREEDY)
    assert judge.calls == 1
    assert result.answer == "5"


def test_failures_degrade_to_the_quorum_and_below_it_name_each_member(scripted: Make) -> None:
    ok = [scripted("a", "4"), scripted("b", "4")]
    broken = scripted("x", "4", fail=RuntimeError("connection reset"))
    result = EnsembleBackend([*ok, broken], early_stop=False).run(P, GREEDY)
    assert result.answer == "4"
    assert result.failed == {"x": "RuntimeError: connection reset"}
    both = [scripted("y", "4", fail=TimeoutError("slow")), broken]
    with pytest.raises(QuorumError, match=r"1 of 3 members answered, the quorum is 2") as info:
        EnsembleBackend([ok[0], *both]).run(P, GREEDY)
    assert "x: RuntimeError: connection reset" in str(info.value)
    assert set(info.value.details["failed"]) == {"x", "y"}


def test_a_hanging_member_is_bounded_by_the_deadline(scripted: Make) -> None:
    members = [scripted("a", "4"), scripted("b", "4"), scripted("hang", "5", delay=30.0)]
    ens = EnsembleBackend(members, early_stop=False, deadline_s=0.5)
    t0 = time.monotonic()
    result = ens.run(P, GREEDY)
    assert time.monotonic() - t0 < 2.0
    assert result.failed == {"hang": "no answer within the 0.5 s deadline"}
    assert ens.metrics()["member_failures"] == 1


def test_samples_give_each_member_n_completions_for_ranked_choice(scripted: Make) -> None:
    a = scripted("a", ["x", "y", "y"])
    b = scripted("b", ["x", "z", "x"])
    ens = EnsembleBackend([a, b], "ranked_choice", samples=3, early_stop=False)
    result = ens.run(P, SamplingParams(max_tokens=4, temperature=1.0, seed=1))
    assert [len(o.completions) for o in result.outcomes] == [3, 3]
    assert result.answer == "x"  # a: y=3, x=2; b: x=3, z=2 -> x=5, y=3, z=2


def test_ensembles_compose(scripted: Make) -> None:
    inner1 = EnsembleBackend([scripted("a", "4"), scripted("b", "4")])
    inner2 = EnsembleBackend([scripted("c", "5"), scripted("d", "4")], quorum=1)
    outer = EnsembleBackend([inner1, inner2, scripted("e", "5")], "majority", early_stop=False)
    result = outer.run(P, GREEDY)
    assert [o.member for o in result.outcomes] == ["ensemble", "ensemble#2", "e"]
    assert result.answer == "4"


def test_health_needs_a_quorum_of_healthy_members(scripted: Make) -> None:
    broken = scripted("x", "4", fail=RuntimeError("down"))
    assert EnsembleBackend([scripted("a", "4"), scripted("b", "4"), broken]).health_check().ok
    health = EnsembleBackend([scripted("a", "4"), broken]).health_check()
    assert not health.ok
    assert "x: broken" in health.detail


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"members": ["one"]}, r"ensemble\.members: an ensemble needs at least 2 members, got 1"),
        ({"weights": [1.0]}, r"ensemble\.weights: 1 weight\(s\) for 2 members"),
        ({"weights": [0.0, 0.0]}, r"ensemble\.weights: at least one weight must be > 0"),
        ({"weights": [1.0, math.nan]}, r"ensemble\.weights\[1\]: must be a finite number >= 0"),
        ({"weights": [1.0, -1.0]}, r"ensemble\.weights\[1\]: must be a finite number"),
        ({"mode": "fast"}, r"ensemble\.mode: 'fast' is not one of parallel, sequential, cascade"),
        ({"quorum": 3}, r"ensemble\.quorum: must be a finite number >= 1 and <= 2"),
        ({"deadline_s": math.inf}, r"ensemble\.deadline_s: must be a finite number > 0"),
        ({"samples": 0}, r"ensemble\.samples"),
        ({"members": [{"nam": "local"}, "x"]}, r"ensemble\.members\[0\]: expected a table"),
        ({"members": [42, "x"]}, r"ensemble\.members\[0\]: int is not a backend"),
        ({"normalise": {"extract": "("}}, r"normalise\.extract: invalid regular expression"),
    ],
)
def test_bad_configuration_is_refused_with_the_field(
    scripted: Make, kwargs: dict[str, Any], message: str
) -> None:
    options: dict[str, Any] = {"members": [scripted("a", "4"), scripted("b", "4")], **kwargs}
    with pytest.raises(ConfigError, match=message):
        EnsembleBackend(**options)


def test_an_unknown_strategy_lists_the_registered_ones(scripted: Make) -> None:
    with pytest.raises(NotFound, match="did you mean 'weighted'"):
        EnsembleBackend([scripted("a", "4"), scripted("b", "4")], "weigthed")


@pytest.mark.slow
def test_an_ensemble_of_real_local_backends_through_the_plugin_host() -> None:
    """End to end: `get_backend("ensemble")` with members named like any job would."""
    import crucible_core

    ens = crucible_core.get_backend(
        "ensemble", members=["local", {"name": "local", "label": "again"}], strategy="unanimous"
    )
    try:
        result = ens.run(Prompt(text="Hello"), SamplingParams(max_tokens=4, temperature=0.0))
        assert [o.member for o in result.outcomes] == ["local", "again"]
        assert all(o.status == "ok" for o in result.outcomes)
        assert result.agreement == 1.0  # greedy decoding of one model agrees with itself
        assert result.usage.completion_tokens == sum(
            len(o.completions[0].tokens) for o in result.outcomes
        )
    finally:
        ens.close()


def test_each_vote_is_an_event_on_the_bus(
    scripted: Make, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crucible_core.records.events import EventBus, read_telemetry

    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path))
    with EventBus() as bus:
        ens = EnsembleBackend(
            [scripted("a", "4"), scripted("b", "5"), scripted("c", "4")],
            bus=bus,
            job_id="ask-1",
            early_stop=False,
        )
        ens.run(P, GREEDY)
    [event] = [e for e in read_telemetry("ask-1") if e.kind == "ensemble.vote"]
    assert event.data["answer"] == "4"
    assert event.data["members"] == ["a", "b", "c"]
    assert event.data["agreement"] == pytest.approx(2 / 3)


def test_pooled_threads_are_reused_and_a_hung_call_does_not_block_others() -> None:
    """The pool hands work to idle threads; a task that blocks holds only its own thread."""
    import threading

    from crucible_ensemble._threads import run_in_daemon_thread

    def pooled() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "crucible-ensemble")

    before = pooled()
    release = threading.Event()
    names: list[str] = []
    done = threading.Semaphore(0)
    run_in_daemon_thread(release.wait)  # occupies one thread until released
    for _ in range(20):

        def task() -> None:
            names.append(threading.current_thread().name)
            done.release()

        run_in_daemon_thread(task)
        assert done.acquire(timeout=5)
    release.set()
    assert len(names) == 20
    assert pooled() - before <= 2  # reused: one held by the blocked task, one at most for the rest

"""HedgedBackend: backups fire on slow calls, the winner returns, the budget holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crucible_hedging import Deadline, FixedDelay, HedgedBackend

from crucible_core.errors import DeadlineExceeded, UnsupportedError
from crucible_core.ir import Prompt, SamplingParams
from crucible_core.testing import check_inference_backend

P = Prompt(text="hi")
S = SamplingParams(max_tokens=4, temperature=0.0)
Make = Callable[..., Any]


def test_a_slow_primary_is_beaten_by_its_backup(slow: Make) -> None:
    backend = slow([2.0, 0.01])
    hedged = HedgedBackend(backend, FixedDelay(delay_ms=50), budget=1.0, burst=1)
    t0 = time.monotonic()
    c = hedged.complete(P, S)
    assert time.monotonic() - t0 < 1.0
    assert c.text == "answer 1 is ready"  # the backup's
    assert backend.calls == 2
    assert backend.starts[1] - backend.starts[0] == pytest.approx(0.05, abs=0.04)
    m = hedged.metrics()
    assert (m["hedges_fired"], m["hedges_won"]) == (1, 1)


def test_a_fast_primary_fires_no_backup(slow: Make) -> None:
    backend = slow([0.0])
    hedged = HedgedBackend(backend, FixedDelay(delay_ms=200), budget=1.0)
    assert hedged.complete(P, S).text == "answer 0 is ready"
    time.sleep(0.3)
    assert backend.calls == 1


def test_the_budget_denies_backups_beyond_its_share(slow: Make) -> None:
    backend = slow([0.05])
    hedged = HedgedBackend(backend, FixedDelay(delay_ms=1), budget=0.25, window=100, burst=1)
    for _ in range(20):
        hedged.complete(P, S)
    m = hedged.metrics()
    assert m["requests"] == 20
    assert m["hedges_fired"] <= 0.25 * 20
    assert m["hedges_denied"] >= 20 - m["hedges_fired"] - 1
    assert m["window_hedge_ratio"] <= 0.25


def test_a_failed_attempt_waits_for_the_other_and_all_failed_raises(slow: Make) -> None:
    backend = slow([0.3, 0.05], fail_on=[1])
    hedged = HedgedBackend(backend, FixedDelay(delay_ms=20), budget=1.0)
    assert (
        hedged.complete(P, S).text == "answer 0 is ready"
    )  # the backup failed; the primary answers
    failing = slow([0.05], fail_on=[0, 1])
    with pytest.raises(RuntimeError, match="call 0 failed"):
        HedgedBackend(failing, FixedDelay(delay_ms=10), budget=1.0).complete(P, S)


def test_the_deadline_policy_bounds_a_hanging_backend(slow: Make) -> None:
    hedged = HedgedBackend(slow([30.0]), Deadline(deadline_ms=300, hedge_at=0.5), budget=1.0)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"no answer within the 0\.3 s deadline \(2 attempt"):
        hedged.complete(P, S)
    assert time.monotonic() - t0 < 1.0
    assert hedged.metrics()["deadline_exceeded"] == 1


@pytest.mark.parametrize("method", ["create_session", "forward_backward", "optim_step"])
def test_training_calls_are_refused_by_construction(slow: Make, method: str) -> None:
    hedged = HedgedBackend(slow([0.0]), "fixed")
    with pytest.raises(UnsupportedError, match="never duplicates a training call"):
        getattr(hedged, method)
    assert not hedged.capabilities().supports_training


def test_the_hedged_backend_passes_the_inference_conformance_kit(slow: Make) -> None:
    check_inference_backend(HedgedBackend(slow([0.0], same_answer=True), "percentile"), timeout=10)


def test_hedge_events_reach_the_bus(
    slow: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crucible_core.records.events import EventBus, read_telemetry

    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path))
    with EventBus() as bus:
        hedged = HedgedBackend(
            slow([1.0, 0.01]), FixedDelay(delay_ms=30), budget=1.0, bus=bus, job_id="h1"
        )
        hedged.complete(P, S)
    kinds = [e.kind for e in read_telemetry("h1")]
    assert kinds == ["hedge.fired", "hedge.won", "hedge.cancelled"]


def test_hedging_composes_with_the_plugin_host(slow: Make) -> None:
    import crucible_core

    inner = HedgedBackend(slow([0.0]), "fixed")
    outer = crucible_core.get_backend("hedged", backend=inner, policy="percentile")
    assert outer.complete(P, S).text == "answer 0 is ready"

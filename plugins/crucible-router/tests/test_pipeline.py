"""Core honours ``[backend].fallbacks`` per call when crucible-router is installed.

A real pipeline run (real SQLite, run directory and telemetry under a temporary
``$CRUCIBLE_HOME``) with the router plugin and two simulated members registered
by name: the primary's failures are scripted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import crucible_router.plugin
import pytest

from crucible_core import RegisterBackend, RegisterStage, hookimpl
from crucible_core.errors import BackendError
from crucible_core.ir import BackendRef, Experiment, Job, Prompt, SamplingParams, StageDef
from crucible_core.pipeline.runner import run_pipeline
from crucible_core.records.events import read_telemetry
from crucible_core.testing import isolated_host

from .conftest import Scripted

MEMBERS: dict[str, Scripted] = {}


class AskStage:
    """Completes once on the experiment's backend and tries to open a training session."""

    def __init__(self, times: int = 1) -> None:
        self.times = times

    def run(self, ctx: Any) -> dict[str, Any]:
        backend = ctx.backend()
        for _ in range(self.times):
            out = backend.complete(Prompt(text="Hi"), SamplingParams(max_tokens=4))
        try:
            session = backend.create_session(None)
        except BackendError as exc:
            session = f"error: {exc.message}"
        return {"answered_by": out.backend_id, "session": session}


class Members:
    @hookimpl
    def register_backends(self, register: RegisterBackend) -> None:
        for name in ("prim", "spare"):
            register(name, lambda name=name: MEMBERS[name])

    @hookimpl
    def register_stages(self, register: RegisterStage) -> None:
        register("ask", AskStage)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path))
    return tmp_path


def test_experiment_fallbacks_fail_over_per_call_and_training_stays(home: Path) -> None:
    MEMBERS["prim"] = Scripted("prim", then=BackendError("down", retryable=True))
    MEMBERS["spare"] = Scripted("spare")
    e = Experiment(
        id="e1",
        stages=[StageDef(name="ask", uses="ask")],
        backend=BackendRef(name="prim", fallbacks=["spare"]),
    )
    with isolated_host(crucible_router.plugin, Members()) as host:
        out = run_pipeline(e, Job(id="r1"), host=host)
    assert out["ask"]["answered_by"] == "spare"
    assert "never moved to another backend" in out["ask"]["session"]
    assert MEMBERS["spare"].training_calls == []
    (ev,) = [ev for ev in read_telemetry("r1") if ev.kind == "route.fallback"]
    assert ev.data["backend"] == "spare"
    assert ev.data["skipped"][0]["backend"] == "prim"


def test_without_the_router_fallbacks_apply_only_at_creation(home: Path) -> None:
    MEMBERS["prim"] = Scripted("prim", then=BackendError("down", retryable=True))
    MEMBERS["spare"] = Scripted("spare")
    e = Experiment(
        id="e1",
        stages=[StageDef(name="ask", uses="ask")],
        backend=BackendRef(name="prim", fallbacks=["spare"]),
    )
    with isolated_host(Members()) as host, pytest.raises(Exception, match="down"):
        run_pipeline(e, Job(id="r2"), host=host)


def test_a_routed_experiment_backend_takes_breaker_options_and_reports_to_the_run(
    home: Path,
) -> None:
    """``[backend] name = "routed"`` with breaker options: the breaker opens after one
    failure, so the primary is called once for three requests; events reach telemetry."""
    MEMBERS["prim"] = Scripted("prim", then=BackendError("down", retryable=True))
    MEMBERS["spare"] = Scripted("spare")
    e = Experiment(
        id="e1",
        stages=[StageDef(name="ask", uses="ask", options={"times": 3})],
        backend=BackendRef(
            name="routed",
            options={"primary": "prim", "failure_threshold": 1, "cooldown_s": 999},
            fallbacks=["spare"],
        ),
    )
    with isolated_host(crucible_router.plugin, Members()) as host:
        out = run_pipeline(e, Job(id="r3"), host=host)
    assert out["ask"]["answered_by"] == "spare"
    # one completion (then the breaker is open) and the stage's training call, which
    # goes to the primary whatever its breaker says
    assert MEMBERS["prim"].calls == 2
    assert MEMBERS["prim"].training_calls == ["create_session"]
    assert MEMBERS["spare"].calls == 3
    kinds = [ev.kind for ev in read_telemetry("r3")]
    assert kinds.count("breaker.open") == 1
    assert kinds.count("route.fallback") == 3


def test_an_experiment_picks_a_routing_policy_by_name(home: Path) -> None:
    """``[backend] name = "routed"`` with ``policy = "round_robin"`` in its options: the
    policy is built through the host like every registration; the stage's three calls
    alternate between the members."""
    MEMBERS["prim"] = Scripted("prim")
    MEMBERS["spare"] = Scripted("spare")
    e = Experiment(
        id="e1",
        stages=[StageDef(name="ask", uses="ask", options={"times": 3})],
        backend=BackendRef(
            name="routed", options={"primary": "prim", "policy": "round_robin"}, fallbacks=["spare"]
        ),
    )
    with isolated_host(crucible_router.plugin, Members()) as host:
        run_pipeline(e, Job(id="r4"), host=host)
    # prim: completions 1 and 3, and the stage's create_session (training stays home)
    assert (MEMBERS["prim"].calls, MEMBERS["spare"].calls) == (3, 1)
    assert MEMBERS["prim"].training_calls == ["create_session"]

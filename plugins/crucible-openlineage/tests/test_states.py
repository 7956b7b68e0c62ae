"""The pure mapping: run statuses to terminal states, events to one START and one terminal."""

from __future__ import annotations

from typing import Any

import pytest
from crucible_openlineage.states import FINAL_JOB_STATES, RunTracker, Transition, terminal_state
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.records.runstatus import RunStatus


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("succeeded", "COMPLETE"),
        ("failed", "FAIL"),
        ("cancelled", "ABORT"),
        ("interrupted", "ABORT"),
        ("budget_exhausted", "ABORT"),
        ("crashed", "ABORT"),
        ("dead", "FAIL"),
        ("something new", "FAIL"),
        (None, "FAIL"),
    ],
)
def test_terminal_state_of_each_status(status: str | None, state: str) -> None:
    assert terminal_state(status) == state


def test_every_run_status_but_running_has_a_deliberate_mapping() -> None:
    from typing import get_args

    finals = [s for s in get_args(RunStatus) if s != "running"]
    assert {s: terminal_state(s) for s in finals} == {
        "succeeded": "COMPLETE",
        "failed": "FAIL",
        "cancelled": "ABORT",
        "budget_exhausted": "ABORT",
        "interrupted": "ABORT",
        "crashed": "ABORT",
    }


def test_every_final_job_status_ends_a_run_and_maps_deliberately() -> None:
    from typing import get_args

    from crucible_core.ir.work import JobStatus

    finals = set(get_args(JobStatus)) - {"pending", "queued", "running"}
    assert finals == FINAL_JOB_STATES
    for status in finals:
        t = RunTracker()
        t.feed("run.start", "j", 1.0, {})
        [end] = t.feed("job.state", "j", 2.0, {"status": status})
        assert end.state == {"succeeded": "COMPLETE", "cancelled": "ABORT"}.get(
            status, "ABORT" if status == "budget_exhausted" else "FAIL"
        )


def test_several_terminal_events_give_one_terminal_the_first_decides() -> None:
    t = RunTracker()
    out = t.feed("run.start", "j", 1.0, {"name": "x"})
    out += t.feed("train.checkpoint", "j", 2.0, {"uri": "file:///c"}, step=4)
    out += t.feed("run.end", "j", 3.0, {"status": "budget_exhausted"})
    out += t.feed("job.state", "j", 4.0, {"status": "failed"})
    out += t.feed("run.end", "j", 5.0, {"status": "succeeded"})
    out += t.close(6.0)
    assert [x.state for x in out] == ["START", "ABORT"]
    assert out[1].checkpoints == ({"uri": "file:///c", "step": 4},)
    assert out[1].start == {"name": "x"}


def test_a_worker_job_state_ends_a_run_the_pipeline_did_not_end() -> None:
    t = RunTracker()
    t.feed("run.start", "j", 1.0, {})
    assert t.feed("job.state", "j", 2.0, {"status": "running"}) == []
    assert [x.state for x in t.feed("job.state", "j", 3.0, {"status": "failed"})] == ["FAIL"]


def test_a_restart_of_an_open_run_aborts_the_lost_execution_first() -> None:
    t = RunTracker()
    t.feed("run.start", "j", 1.0, {})
    out = t.feed("run.start", "j", 2.0, {})
    assert [x.state for x in out] == ["ABORT", "START"]
    assert t.open_runs == ["j"]


def test_events_of_a_run_never_started_give_nothing() -> None:
    t = RunTracker()
    assert t.feed("run.end", "j", 1.0, {"status": "succeeded"}) == []
    assert t.feed("job.state", "j", 1.0, {"status": "succeeded"}) == []
    assert t.close(2.0) == []


_KINDS = st.sampled_from(
    ["run.start", "run.end", "job.state", "train.checkpoint", "train.step", "stage.end"]
)
_STATUSES = st.sampled_from(
    ["succeeded", "failed", "cancelled", "interrupted", "budget_exhausted", "queued", "running"]
)
_EVENT = st.tuples(st.sampled_from(["a", "b", "c"]), _KINDS, _STATUSES)


@settings(max_examples=300, deadline=None)
@given(st.lists(_EVENT, max_size=40))
def test_any_event_sequence_gives_each_start_exactly_one_terminal(
    events: list[tuple[str, str, str]],
) -> None:
    tracker = RunTracker()
    out: list[Transition] = []
    for i, (job, kind, status) in enumerate(events):
        data: dict[str, Any] = {"status": status, "uri": f"mem://{i}"}
        out += tracker.feed(kind, job, float(i), data, step=i)
    out += tracker.close(float(len(events)))
    assert tracker.open_runs == []
    for job in "abc":
        states = [x.state for x in out if x.job_id == job]
        # START, terminal, START, terminal, ...: never two of a kind in a row, none left open.
        assert states[0::2] == ["START"] * len(states[0::2])
        assert all(s in ("COMPLETE", "FAIL", "ABORT") for s in states[1::2])
        assert len(states) % 2 == 0
        starts = sum(1 for _, k, _ in [e for e in events if e[0] == job] if k == "run.start")
        assert states.count("START") == starts
    # The terminal of a run ended by run.end is the mapping of the status it carried.
    for x in out:
        if x.state != "START" and x.end.get("status") and "reason" not in x.end:
            assert x.state == terminal_state(x.end["status"])


@settings(max_examples=100, deadline=None)
@given(st.lists(_EVENT, max_size=30))
def test_any_event_sequence_gives_each_openlineage_run_one_start_then_one_terminal(
    events: list[tuple[str, str, str]],
) -> None:
    """The same guarantee on the built events, as a catalogue sees them (by runId)."""
    import json

    from crucible_openlineage.build import build_event, to_json

    tracker = RunTracker()
    executions: dict[str, int] = {}
    out: list[Transition] = []
    for i, (job, kind, status) in enumerate(events):
        data: dict[str, Any] = {"status": status, "name": job}
        if kind == "run.start":  # as the pipeline numbers them
            executions[job] = executions.get(job, 0) + 1
            data["execution"] = executions[job]
        out += tracker.feed(kind, job, float(i), data)
    out += tracker.close(float(len(events)))
    by_run: dict[str, list[str]] = {}
    for t in out:
        event = json.loads(to_json(build_event(t, namespace="ns")))
        by_run.setdefault(event["run"]["runId"], []).append(event["eventType"])
    assert len(by_run) == sum(executions.values())
    for states in by_run.values():
        assert len(states) == 2
        assert states[0] == "START"
        assert states[1] in ("COMPLETE", "FAIL", "ABORT")

"""A real ``crucible train`` run (the toy backend learns for real) seen through OpenTelemetry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crucible_core.cli.main import main
from crucible_core.ir import encode
from crucible_core.plugins import PluginHost
from crucible_core.records.events import read_telemetry


def test_crucible_train_gives_one_trace_matching_its_telemetry(
    host: PluginHost, otel: Any, tmp_path: Path
) -> None:
    from tests.test_training_workflow import make_job

    path = tmp_path / "job.json"
    path.write_bytes(encode(make_job()))
    assert main(["train", str(path), "--job-id", "traced", "--no-progress"]) == 0
    events = list(read_telemetry("traced"))
    assert otel.sink.close(10)
    spans = list(otel.spans.get_finished_spans())

    # One trace, rooted at the run, from its first event to its last.
    assert len({s.context.trace_id for s in spans}) == 1
    [root] = [s for s in spans if s.parent is None]
    assert root.name == "crucible.run"
    assert root.attributes is not None
    assert root.attributes["crucible.job_id"] == "traced"
    assert root.start_time == int(events[0].ts * 1e9)
    assert root.end_time == int(events[-1].ts * 1e9)
    # The run's own end (run.end) closed it, with the run's status, not the sink's exit.
    assert events[-1].kind == "run.end"
    assert root.attributes["crucible.job.status"] == "succeeded"

    # A span per stage of the run, with the stage's own timing and status.
    started = {e.data["stage"]: e for e in events if e.kind == "stage.start"}
    ended = {e.data["stage"]: e for e in events if e.kind == "stage.end"}
    stages = {s.attributes["crucible.stage"]: s for s in spans if s.name.startswith("stage ")}  # type: ignore[index]
    assert set(stages) == set(ended) >= {"prepare", "train", "evaluate", "save"}
    for name, span in stages.items():
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id
        assert span.end_time == int(ended[name].ts * 1e9)
        if name in started:
            assert span.start_time == int(started[name].ts * 1e9)
        assert span.attributes["crucible.stage.status"] == ended[name].data["status"]  # type: ignore[index]

    # A span per checkpoint event, in order, under the stage that saved it.
    checkpoints = [e for e in events if e.kind == "train.checkpoint"]
    assert len(checkpoints) >= 3  # steps 4, 8, 12 and the sampler weights
    cspans = sorted((s for s in spans if s.name.startswith("checkpoint")), key=lambda s: s.end_time)
    assert [s.end_time for s in cspans] == [int(e.ts * 1e9) for e in checkpoints]
    assert [s.attributes["crucible.checkpoint.uri"] for s in cspans] == [  # type: ignore[index]
        e.data["uri"] for e in checkpoints
    ]
    train = stages["train"]
    assert all(s.parent is not None for s in cspans)
    assert cspans[0].parent.span_id == train.context.span_id  # type: ignore[union-attr]

    # Metrics: the last step's loss, every step counted, a step time per step.
    steps = [e for e in events if e.kind == "train.step"]
    assert len(steps) == 12
    [(attrs, loss)] = otel.points("crucible.train.loss")
    assert attrs == {"crucible.job_id": "traced"}
    assert loss.value == steps[-1].data["loss"]
    [(_, count)] = otel.points("crucible.train.steps")
    assert count.value == 12
    [(_, step_time)] = otel.points("crucible.train.step_time")
    assert step_time.count == 12
    train_start = next(e.ts for e in events if e.kind == "train.start")
    assert abs(step_time.sum - (steps[-1].ts - train_start)) < 1e-6
    assert otel.sink.dropped == 0

"""Events -> spans and metric points, checked on what the SDK's in-memory exporters received."""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import StatusCode

from crucible_core.records.events import Event, read_telemetry


def ev(kind: str, ts: float, job: str = "j1", step: int | None = None, **data: Any) -> Event:
    return Event(kind=kind, job_id=job, ts=ts, step=step, data=data)


def feed(otel: Any, *events: Event) -> None:
    for e in events:
        assert otel.sink.offer(e)


def test_a_run_is_one_trace_with_a_span_per_stage_and_per_checkpoint(otel: Any) -> None:
    feed(
        otel,
        ev("stage.start", 100.0, stage="load", uses="data.load"),
        ev("stage.end", 101.0, stage="load", status="ok", duration_ms=1000.0),
        ev("stage.start", 101.0, stage="train", uses="train.loop"),
        ev("train.start", 101.5, total_steps=4),
        ev("train.checkpoint", 103.0, step=2, uri="mem://a", checkpoint_kind="state"),
        ev("train.checkpoint", 104.0, step=4, uri="mem://b", checkpoint_kind="state"),
        ev("stage.end", 104.5, stage="train", status="ok", duration_ms=3500.0),
        ev("stage.end", 104.5, stage="evaluate", status="skipped", duration_ms=0.0),
        ev("job.state", 105.0, status="succeeded"),
    )
    spans = {s.name: s for s in otel.finished()}
    assert set(spans) == {
        "crucible.run",
        "stage load",
        "stage train",
        "stage evaluate",
        "checkpoint step 2",
        "checkpoint step 4",
    }
    root = spans["crucible.run"]
    assert root.parent is None
    assert {s.context.trace_id for s in spans.values()} == {root.context.trace_id}
    assert (root.start_time, root.end_time) == (100 * 10**9, 105 * 10**9)
    assert root.attributes is not None
    assert root.attributes["crucible.job_id"] == "j1"
    assert root.attributes["crucible.train.total_steps"] == 4
    train = spans["stage train"]
    assert train.parent is not None
    assert train.parent.span_id == root.context.span_id
    assert (train.start_time, train.end_time) == (101 * 10**9, int(104.5 * 10**9))
    # A checkpoint span covers the work it saved: from the stage start or the previous one.
    c2, c4 = spans["checkpoint step 2"], spans["checkpoint step 4"]
    assert c2.parent is not None
    assert c2.parent.span_id == train.context.span_id
    assert (c2.start_time, c2.end_time) == (101 * 10**9, 103 * 10**9)
    assert (c4.start_time, c4.end_time) == (103 * 10**9, 104 * 10**9)
    assert c4.attributes is not None
    assert c4.attributes["crucible.checkpoint.uri"] == "mem://b"
    skipped = spans["stage evaluate"]
    assert skipped.attributes is not None
    assert skipped.attributes["crucible.stage.status"] == "skipped"


def test_a_failed_stage_and_run_carry_error_status(otel: Any) -> None:
    feed(
        otel,
        ev("stage.start", 1.0, stage="train"),
        ev("stage.end", 2.0, stage="train", status="error", error="boom"),
        ev("job.state", 3.0, status="failed"),
    )
    spans = {s.name: s for s in otel.finished()}
    assert spans["stage train"].status.status_code is StatusCode.ERROR
    assert spans["stage train"].status.description == "boom"
    assert spans["crucible.run"].status.status_code is StatusCode.ERROR


def test_open_runs_end_at_their_last_event_when_the_sink_closes(otel: Any) -> None:
    feed(otel, ev("stage.start", 1.0, stage="train"), ev("train.step", 7.0, step=1, loss=2.0))
    assert otel.finished() == []  # nothing ends until the run does
    assert otel.sink.close(10)
    spans = {s.name: s for s in otel.spans.get_finished_spans()}
    assert spans["crucible.run"].end_time == 7 * 10**9
    assert spans["stage train"].attributes["crucible.stage.status"] == "unfinished"


def test_two_runs_are_two_traces(otel: Any) -> None:
    feed(
        otel,
        ev("stage.start", 1.0, job="a", stage="x"),
        ev("stage.start", 1.0, job="b", stage="x"),
        ev("job.state", 2.0, job="a", status="succeeded"),
        ev("job.state", 2.0, job="b", status="cancelled"),
    )
    roots = [s for s in otel.finished() if s.name == "crucible.run"]
    assert len({r.context.trace_id for r in roots}) == 2


def test_step_metrics_loss_step_time_and_tokens_per_second(otel: Any) -> None:
    """Each step's loss reaches the gauge (collected after every step, as a reader would)."""
    feed(otel, ev("train.start", 10.0, total_steps=3))
    seen: list[float] = []
    for i, (ts, loss, tokens) in enumerate([(10.5, 3.0, 100), (11.0, 2.0, 200), (12.0, 1.5, 400)]):
        # The bus normalises train.step: numeric fields go under "metrics".
        feed(otel, ev("train.step", ts, step=i + 1, loss=loss, metrics={"tokens": tokens}))
        otel.sink.flush(10)
        [(attrs, point)] = otel.points("crucible.train.loss")
        assert attrs == {"crucible.job_id": "j1"}
        seen.append(point.value)
    assert seen == [3.0, 2.0, 1.5]
    [(_, steps)] = otel.points("crucible.train.steps")
    assert steps.value == 3
    [(_, hist)] = otel.points("crucible.train.step_time")
    assert hist.count == 3
    assert abs(hist.sum - 2.0) < 1e-9  # 0.5 + 0.5 + 1.0 s
    [(_, tps)] = otel.points("crucible.train.tokens_per_second")
    assert tps.value == 200.0  # (400 - 200) tokens over 1 s


def test_eval_metrics_are_gauges_by_split_and_name(otel: Any) -> None:
    feed(
        otel,
        ev("eval.metric", 1.0, split="validation", loss=0.5, metrics={"exact_match": 0.9}),
    )
    otel.sink.flush(10)
    [(attrs, point)] = otel.points("crucible.eval.loss")
    assert attrs["split"] == "validation"
    assert point.value == 0.5
    [(attrs, point)] = otel.points("crucible.eval.metric")
    assert attrs["metric"] == "exact_match"
    assert point.value == 0.9


def test_events_without_a_job_are_ignored_and_odd_payloads_do_not_break_it(otel: Any) -> None:
    feed(
        otel,
        ev("plugin.thing", 1.0, job=""),
        ev("stage.end", 2.0, stage="never-started", status="ok"),
        ev("train.step", 3.0, step=1, loss="nan?", metrics={"tokens": "many"}),
        ev("custom.event", 4.0, payload={"nested": [1, 2]}, obj=object()),
    )
    otel.finished()
    assert otel.sink.errors == 0
    assert otel.sink.handled == 4


def test_events_after_close_are_dropped_and_counted_and_close_is_idempotent(otel: Any) -> None:
    feed(otel, ev("stage.start", 1.0, stage="x"))
    assert otel.sink.close(10)
    assert otel.sink.offer(ev("stage.end", 2.0, stage="x")) is False
    assert otel.sink.dropped == 1
    [note] = read_telemetry("j1")  # the run's record notes the gap in the copy
    assert (note.kind, note.data["dropped"]) == ("sink.dropped", 1)
    assert "closed" in note.data["message"]
    assert otel.sink.close(10)
    assert [s.name for s in otel.spans.get_finished_spans()] == ["stage x", "crucible.run"]

"""Crucible events -> OpenTelemetry spans and metric points (imports opentelemetry).

One trace per run (``job_id``): a root span ``crucible.run`` from the run's first
event to its ``run.end`` (the pipeline's; or a terminal ``job.state``, or, for a
run that never ended, its last event when the sink closes); under it a span per stage
(``stage.start`` .. ``stage.end``, status from the stage's) and, under the
stage that was running, a span per checkpoint covering the work it saved (from
the previous checkpoint, or the stage's start, to ``train.checkpoint``). Other
events become span events on the innermost open span. Timestamps are the
events' own ``ts``, so a span's duration is what the run measured, not when
the sink got round to it.

Metrics (meter ``crucible``; attribute ``crucible.job_id`` on each):

- ``crucible.train.loss`` (gauge), ``crucible.train.learning_rate`` (gauge),
  ``crucible.train.steps`` (counter);
- ``crucible.train.step_time`` (histogram, s): time between consecutive
  ``train.step`` events (the first from ``train.start``);
- ``crucible.train.tokens_per_second`` (gauge): tokens trained between two
  steps over that time;
- ``crucible.eval.loss`` and ``crucible.eval.metric`` (gauges; attributes
  ``split`` and ``metric``).

Not thread-safe: :class:`crucible_otel.sink.OtelSink` calls it from its one
worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from crucible_core.records.events import Event

__all__ = ["TERMINAL_STATES", "Translator"]

TERMINAL_STATES: Final = frozenset({"succeeded", "failed", "cancelled", "dead"})
_SCOPE: Final = "crucible"


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def _attributes(prefix: str, data: dict[str, Any]) -> dict[str, AttributeValue]:
    """The scalar items of ``data`` (nested ``metrics`` flattened), as OTel attributes."""
    out: dict[str, AttributeValue] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_attributes(f"{prefix}{key}.", value))  # pyright: ignore[reportUnknownArgumentType]
        elif isinstance(value, str | bool | int | float):
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class _Stage:
    span: Span
    start: float
    context: Context


@dataclass
class _Run:
    root: Span
    context: Context
    last_ts: float
    stages: dict[str, _Stage] = field(default_factory=dict[str, _Stage])
    last_checkpoint: float | None = None
    last_step: tuple[float, float | None] | None = None  # (ts, cumulative tokens)


class Translator:
    """Turns each event into spans and metric points; :meth:`finish` ends what is open."""

    def __init__(self, tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
        self._tracer = tracer_provider.get_tracer(_SCOPE)
        meter = meter_provider.get_meter(_SCOPE)
        self.loss = meter.create_gauge("crucible.train.loss", description="training loss per step")
        self.lr = meter.create_gauge("crucible.train.learning_rate")
        self.steps = meter.create_counter("crucible.train.steps", unit="{step}")
        self.step_time = meter.create_histogram(
            "crucible.train.step_time", unit="s", description="time between consecutive steps"
        )
        self.tokens_per_s = meter.create_gauge("crucible.train.tokens_per_second", unit="{token}/s")
        self.eval_loss = meter.create_gauge("crucible.eval.loss")
        self.eval_metric = meter.create_gauge("crucible.eval.metric")
        self.dropped = meter.create_counter(
            "crucible.otel.dropped_events",
            unit="{event}",
            description="events the OpenTelemetry sink dropped because its queue was full",
        )
        self._runs: dict[str, _Run] = {}

    # -- runs -----------------------------------------------------------------

    def _run(self, event: Event) -> _Run:
        run = self._runs.get(event.job_id)
        if run is None:
            root = self._tracer.start_span(
                "crucible.run",
                context=Context(),  # a new trace, whatever the caller's context
                start_time=_ns(event.ts),
                attributes={"crucible.job_id": event.job_id},
            )
            run = _Run(root=root, context=trace.set_span_in_context(root), last_ts=event.ts)
            self._runs[event.job_id] = run
        run.last_ts = max(run.last_ts, event.ts)
        return run

    def _innermost(self, run: _Run) -> tuple[Span, Context, float]:
        if run.stages:
            stage = next(reversed(run.stages.values()))
            return stage.span, stage.context, stage.start
        return run.root, run.context, run.last_ts

    def _end_run(self, job_id: str, ts: float, status: str | None) -> None:
        run = self._runs.pop(job_id, None)
        if run is None:
            return
        for stage in run.stages.values():
            stage.span.set_attribute("crucible.stage.status", "unfinished")
            stage.span.end(end_time=_ns(ts))
        if status is not None:
            run.root.set_attribute("crucible.job.status", status)
            if status != "succeeded":
                run.root.set_status(Status(StatusCode.ERROR, status))
        run.root.end(end_time=_ns(ts))

    def finish(self) -> None:
        """End every open run at its last event (the process is stopping)."""
        for job_id, run in list(self._runs.items()):
            self._end_run(job_id, run.last_ts, None)

    @property
    def open_runs(self) -> list[str]:
        return list(self._runs)

    # -- events ---------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if not event.job_id:
            return
        run = self._run(event)
        kind, data = event.kind, event.data
        if kind == "stage.start":
            self._stage_start(run, event)
        elif kind == "stage.end":
            self._stage_end(run, event)
        elif kind == "train.step":
            self._step(run, event)
        elif kind == "train.checkpoint":
            self._checkpoint(run, event)
        elif kind == "eval.metric":
            self._eval(run, event)
        elif kind == "train.start":
            run.last_step = (event.ts, None)
            run.last_checkpoint = None
            run.root.set_attributes(_attributes("crucible.train.", data))
        elif kind == "job.state":
            status = str(data.get("status", ""))
            run.root.add_event("job.state", _attributes("", data), timestamp=_ns(event.ts))
            if status in TERMINAL_STATES:
                self._end_run(event.job_id, event.ts, status)
        elif kind == "run.end":  # the pipeline's last word on a run, whoever started it
            error = data.get("error")
            if error:
                run.root.add_event("run.error", {"message": str(error)}, timestamp=_ns(event.ts))
            self._end_run(event.job_id, event.ts, str(data.get("status") or "") or None)
        else:
            span, _, _ = self._innermost(run)
            attrs = _attributes("", data)
            if event.step is not None:
                attrs["step"] = event.step
            span.add_event(kind, attrs, timestamp=_ns(event.ts))

    def _stage_start(self, run: _Run, event: Event) -> None:
        name = str(event.data.get("stage", "?"))
        span = self._tracer.start_span(
            f"stage {name}",
            context=run.context,
            start_time=_ns(event.ts),
            attributes={
                "crucible.stage": name,
                "crucible.stage.uses": str(event.data.get("uses", "")),
            },
        )
        run.stages[name] = _Stage(span, event.ts, trace.set_span_in_context(span))

    def _stage_end(self, run: _Run, event: Event) -> None:
        name = str(event.data.get("stage", "?"))
        status = str(event.data.get("status", "ok"))
        stage = run.stages.pop(name, None)
        if stage is None:  # a skipped stage never started: a zero-length span says so
            span = self._tracer.start_span(
                f"stage {name}",
                context=run.context,
                start_time=_ns(event.ts),
                attributes={"crucible.stage": name},
            )
        else:
            span = stage.span
        span.set_attribute("crucible.stage.status", status)
        if status == "error":
            span.set_status(Status(StatusCode.ERROR, str(event.data.get("error", ""))))
        span.end(end_time=_ns(event.ts))

    def _checkpoint(self, run: _Run, event: Event) -> None:
        _, parent, parent_start = self._innermost(run)
        start = max(parent_start, run.last_checkpoint or parent_start)
        step = event.step if event.step is not None else event.data.get("step")
        attrs = _attributes("crucible.checkpoint.", event.data)
        if step is not None:
            attrs["crucible.checkpoint.step"] = step
        span = self._tracer.start_span(
            f"checkpoint step {step}", context=parent, start_time=_ns(start), attributes=attrs
        )
        span.end(end_time=_ns(event.ts))
        run.last_checkpoint = event.ts

    def _step(self, run: _Run, event: Event) -> None:
        job = {"crucible.job_id": event.job_id}
        data = event.data
        metrics: dict[str, Any] = data.get("metrics") or {}
        loss = data.get("loss")
        if isinstance(loss, int | float):
            self.loss.set(loss, job)
        lr = metrics.get("lr")
        if isinstance(lr, int | float):
            self.lr.set(lr, job)
        self.steps.add(1, job)
        tokens = metrics.get("tokens")
        tokens = float(tokens) if isinstance(tokens, int | float) else None
        if run.last_step is not None:
            last_ts, last_tokens = run.last_step
            dt = event.ts - last_ts
            if dt > 0:
                self.step_time.record(dt, job)
                if tokens is not None and last_tokens is not None and tokens >= last_tokens:
                    self.tokens_per_s.set((tokens - last_tokens) / dt, job)
        run.last_step = (event.ts, tokens)

    def _eval(self, run: _Run, event: Event) -> None:
        split = str(event.data.get("split", ""))
        attrs: dict[str, AttributeValue] = {"crucible.job_id": event.job_id, "split": split}
        loss = event.data.get("loss")
        if isinstance(loss, int | float):
            self.eval_loss.set(loss, attrs)
        for name, value in (event.data.get("metrics") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.eval_metric.set(value, {**attrs, "metric": str(name)})
        span, _, _ = self._innermost(run)
        span.add_event("eval.metric", _attributes("", event.data), timestamp=_ns(event.ts))

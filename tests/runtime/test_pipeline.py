"""The pipeline runner over real registered stages, events, manifests and lineage."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from crucible_core.contracts import StageContext
from crucible_core.errors import BackendError, Cancelled, ConfigError, CrucibleError, NotFound
from crucible_core.hookspecs import hookimpl
from crucible_core.ir.common import BackendRef
from crucible_core.ir.experiment import Experiment, StageDef
from crucible_core.ir.training import DatasetSpec
from crucible_core.ir.work import Job
from crucible_core.pipeline.executors import InlineExecutor, ThreadExecutor
from crucible_core.pipeline.runner import PipelineStageContext, run_pipeline
from crucible_core.plugins import PluginHost
from crucible_core.records.artifacts import read_manifest, verify_run
from crucible_core.records.events import read_telemetry
from crucible_core.records.lineage import LineageRecorder
from crucible_core.records.paths import db_path, run_dir

RAN: list[str] = []
BARRIER: dict[str, threading.Barrier] = {}


class Record:
    """Returns its options and the names of its inputs; records that it ran."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        RAN.append(ctx.options.get("label", "?"))
        if "barrier" in self.options:
            BARRIER[self.options["barrier"]].wait()
        return {"label": self.options.get("label"), "saw": sorted(ctx.inputs)}


class Fail:
    def __init__(self, retryable: bool = False, **options: Any) -> None:
        self.retryable = retryable

    def run(self, ctx: StageContext) -> None:
        raise BackendError("remote said no", retryable=self.retryable)


class Crash(Record):
    def run(self, ctx: StageContext) -> None:
        raise ZeroDivisionError("oops")


class CancelJob:
    def __init__(self, flag: Any) -> None:
        self.flag = flag

    def run(self, ctx: StageContext) -> None:
        self.flag.set()


class Store(Record):
    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        out = ctx.run_dir / "out.txt"
        out.write_text("made by a stage")
        artifact = ctx.artifacts.put(out, type="report", name="out")
        ctx.emit("eval.metric", step=1, accuracy=0.5)
        return {"sha": artifact.sha256}


class UseBackend(Record):
    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        return {"backend": ctx.backend().name}


class Strict:
    def __init__(self, *, size: int) -> None:
        self.size = size

    def run(self, ctx: StageContext) -> None:
        return None


class FakeBackend:
    def __init__(self, **options: Any) -> None:
        self.name = f"fake{options}"


class StagesPlugin:
    @hookimpl
    def register_stages(self, register: Any) -> None:
        for name, cls in [
            ("record", Record),
            ("fail", Fail),
            ("crash", Crash),
            ("store", Store),
            ("use-backend", UseBackend),
            ("strict", Strict),
        ]:
            register(name, cls)

    @hookimpl
    def register_backends(self, register: Any) -> None:
        register("fake", FakeBackend)


@pytest.fixture
def stages(host: PluginHost, crucible_home: Path) -> PluginHost:
    RAN.clear()
    host.add_plugin(StagesPlugin(), name="test-stages")
    return host


def stage(name: str, uses: str = "record", *deps: str, **options: Any) -> StageDef:
    return StageDef(name=name, uses=uses, depends_on=list(deps), options={"label": name, **options})


def exp(*stages_: StageDef, **kw: Any) -> Experiment:
    return Experiment(id="exp1", stages=list(stages_), **kw)


def test_diamond_runs_in_order_with_inputs(stages: PluginHost) -> None:
    e = exp(
        stage("d", "record", "b", "c"),
        stage("b", "record", "a"),
        stage("c", "record", "a"),
        stage("a"),
    )
    out = run_pipeline(e, Job(id="run1"), host=stages)
    assert RAN[0] == "a"
    assert RAN[-1] == "d"
    assert out["d"] == {"label": "d", "saw": ["b", "c"]}
    assert out["b"]["saw"] == ["a"]
    events = list(read_telemetry("run1"))
    kinds = [(ev.kind, ev.data.get("stage")) for ev in events]
    # run.start and run.end frame the stages' events
    assert kinds[0] == ("run.start", None)
    assert kinds[1] == ("stage.start", "a")
    assert kinds[-2] == ("stage.end", "d")
    assert kinds[-1] == ("run.end", None)
    assert len(kinds) == 10
    assert events[0].data["config_digest"] == read_manifest(run_dir("run1"))["config_digest"]
    assert events[-1].data["status"] == "succeeded"
    assert events[0].data["execution"] == 1
    run_pipeline(e, Job(id="run1"), host=stages)  # the same run directory again: a resume
    starts = [ev.data for ev in read_telemetry("run1") if ev.kind == "run.start"]
    assert [s["execution"] for s in starts] == [1, 2]
    assert read_manifest(run_dir("run1"))["executions"] == 2
    manifest = read_manifest(run_dir("run1"))
    assert manifest["status"] == "succeeded"
    assert set(manifest["stages"]) == {"a", "b", "c", "d"}
    assert manifest["stages"]["d"]["status"] == "ok"
    assert len(manifest["config_digest"]) == 64


def test_independent_stages_run_concurrently(stages: PluginHost) -> None:
    BARRIER["x"] = threading.Barrier(2, timeout=5)
    e = exp(stage("a"), stage("b", barrier="x"), stage("c", barrier="x"))
    out = run_pipeline(e, Job(id="run2"), host=stages, executor=ThreadExecutor(max_workers=2))
    assert set(out) == {"a", "b", "c"}


def test_disabled_stage_is_skipped_and_dependents_run(stages: PluginHost) -> None:
    off = msgspec.structs.replace(stage("b", "record", "a"), enabled=False)
    e = exp(stage("a"), off, stage("c", "record", "b"))
    out = run_pipeline(e, Job(id="run3"), host=stages, executor=InlineExecutor())
    assert RAN == ["a", "c"]
    assert out["c"]["saw"] == []
    assert read_manifest(run_dir("run3"))["stages"]["b"]["status"] == "disabled"


def test_failing_stage_stops_dependents_and_is_named(stages: PluginHost) -> None:
    e = exp(
        stage("a"),
        stage("bad", "fail", "a", retryable=True),
        stage("after", "record", "bad"),
        stage("later", "record", "after"),
        stage("side", "record", "a"),
    )
    with pytest.raises(BackendError) as info:
        run_pipeline(e, Job(id="run4"), host=stages)
    err = info.value
    assert err.message == "stage 'bad' failed: remote said no"
    assert err.retryable is True
    assert err.details["stage"] == "bad"
    assert "after" not in RAN
    assert "later" not in RAN
    assert "side" in RAN
    manifest = read_manifest(run_dir("run4"))
    assert manifest["status"] == "failed"
    assert manifest["stages"]["after"]["status"] == "skipped"
    assert manifest["stages"]["later"]["status"] == "skipped"
    ends = [ev.data for ev in read_telemetry("run4") if ev.kind == "run.end"]
    assert len(ends) == 1
    assert ends[0]["status"] == "failed"
    assert "remote said no" in ends[0]["error"]


def test_non_crucible_exception_names_the_stage(stages: PluginHost) -> None:
    with pytest.raises(CrucibleError, match=r"stage 'boom' failed: ZeroDivisionError: oops"):
        run_pipeline(exp(stage("boom", "crash")), Job(id="run5"), host=stages)


def test_cycle_is_refused_naming_it(stages: PluginHost) -> None:
    # Built in Python (no decode validation) so the cycle reaches the runner.
    e = exp(stage("a", "record", "c"), stage("b", "record", "a"), stage("c", "record", "b"))
    with pytest.raises(ConfigError) as info:
        run_pipeline(e, Job(id="run6"), host=stages)
    assert "cycle" in info.value.message
    assert info.value.details["cycle"][0] == info.value.details["cycle"][-1]
    assert set(info.value.details["cycle"]) == {"a", "b", "c"}
    assert RAN == []


def test_unknown_stage_is_found_before_anything_runs(stages: PluginHost) -> None:
    e = exp(stage("a"), stage("b", "recrod", "a"))
    with pytest.raises(NotFound, match="recrod") as info:
        run_pipeline(e, Job(id="run7"), host=stages)
    assert "did you mean 'record'" in (info.value.hint or "")
    assert RAN == []


def test_cancellation_stops_before_the_next_stage(stages: PluginHost) -> None:
    flag = threading.Event()

    class Canceller:
        def run(self, ctx: StageContext) -> None:
            flag.set()

    stages.add_plugin(
        type(
            "P",
            (),
            {
                "register_stages": hookimpl(
                    lambda self, register: register("cancel", lambda **_: Canceller())
                )
            },
        )(),
        name="cancel-plugin",
    )
    e = exp(stage("a", "cancel"), stage("b", "record", "a"))
    with pytest.raises(Cancelled, match="stages not run: b"):
        run_pipeline(e, Job(id="run8"), host=stages, cancel=flag, executor=InlineExecutor())
    assert RAN == []
    assert read_manifest(run_dir("run8"))["status"] == "cancelled"
    ends = [ev.data["status"] for ev in read_telemetry("run8") if ev.kind == "run.end"]
    assert ends == ["cancelled"]


def test_artifacts_lineage_and_telemetry(stages: PluginHost) -> None:
    e = exp(
        stage("make", "store"),
        dataset=DatasetSpec(uri="sample:chat"),
    )
    out = run_pipeline(e, Job(id="run9"), host=stages)
    sha = out["make"]["sha"]
    manifest = read_manifest(run_dir("run9"))
    (entry,) = manifest["artifacts"]
    assert entry["path"] == "out.txt"
    assert entry["sha256"] == sha
    assert manifest["dataset"] == {"uri": "sample:chat"}  # no file: no file_sha256
    assert verify_run(run_dir("run9")).ok
    with LineageRecorder(db_path()) as rec:
        trace = rec.get_trace("run9")
        assert [s.name for s in trace.spans] == ["make"]
        assert trace.spans[0].status == "ok"
        assert [a.sha256 for a in trace.artifacts] == [sha]
        assert [c.id for c in rec.ancestors(f"sha256:{sha}").children] == ["run9"]
        assert rec.ancestors("run9").children[0].id == "dataset:sample:chat"
    (end,) = [ev.data for ev in read_telemetry("run9") if ev.kind == "run.end"]
    assert [(a["artifact_id"], a["sha256"], a["stage"]) for a in end["artifacts"]] == [
        (f"sha256:{sha}", sha, "make")
    ]
    (start,) = [ev.data for ev in read_telemetry("run9") if ev.kind == "run.start"]
    assert start["dataset"] == {"uri": "sample:chat", "hash": None}
    metrics = [ev for ev in read_telemetry("run9") if ev.kind == "eval.metric"]
    assert metrics[0].data == {"loss": None, "metrics": {"accuracy": 0.5}, "stage": "make"}


def test_backend_fallbacks(stages: PluginHost) -> None:
    e = exp(
        StageDef(name="b", uses="use-backend"),
        backend=BackendRef(name="missing", options={"x": 1}, fallbacks=["fake"]),
    )
    out = run_pipeline(e, Job(id="run10"), host=stages)
    assert out["b"] == {"backend": "fake{}"}
    (fallback,) = [ev for ev in read_telemetry("run10") if ev.kind == "backend.fallback"]
    assert fallback.data["backend"] == "fake"
    e2 = exp(
        StageDef(name="b", uses="use-backend"), backend=BackendRef(name="fake", options={"x": 1})
    )
    assert run_pipeline(e2, Job(id="run11"), host=stages)["b"] == {"backend": "fake{'x': 1}"}
    resolved = run_pipeline(
        e2, Job(id="run12"), host=stages, backend_resolver=lambda name: FakeBackend(by="me")
    )
    assert resolved["b"] == {"backend": "fake{'by': 'me'}"}


def test_context_satisfies_the_contract(stages: PluginHost) -> None:
    seen: list[bool] = []

    class Check:
        def run(self, ctx: StageContext) -> None:
            seen.append(isinstance(ctx, StageContext) and isinstance(ctx, PipelineStageContext))

    stages.add_plugin(
        type(
            "Q", (), {"register_stages": hookimpl(lambda self, register: register("check", Check))}
        )(),
        name="check-plugin",
    )
    run_pipeline(exp(StageDef(name="c", uses="check")), Job(id="run13"), host=stages)
    assert seen == [True]


def test_stage_refusing_its_options_is_a_config_error(stages: PluginHost) -> None:
    e = exp(stage("a"), StageDef(name="b", uses="strict", options={"sise": 3}))
    with pytest.raises(ConfigError) as info:
        run_pipeline(e, Job(id="run14"), host=stages)
    assert info.value.message.startswith("stage 'b': 'strict' (plugin 'test-stages') refused")
    assert "sise" in info.value.message
    assert RAN == []


def test_job_without_id_is_refused(stages: PluginHost) -> None:
    with pytest.raises(ConfigError, match="needs a job with an id"):
        run_pipeline(exp(stage("a")), Job(), host=stages)


class _BareFuture:
    """A plugin executor's future with only the contract's result() and done()."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def result(self, timeout: float | None = None) -> Any:
        if not self._event.wait(timeout):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value

    def done(self) -> bool:
        return self._event.is_set()


class _BareThreadExecutor:
    """Runs each call on its own thread and returns a _BareFuture (no add_done_callback)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> _BareFuture:
        future = _BareFuture()

        def work() -> None:
            try:
                future._value = fn(*args, **kwargs)
            except BaseException as exc:
                future._error = exc
            future._event.set()

        threading.Thread(target=work, daemon=True).start()
        return future

    def shutdown(self, wait: bool = True) -> None:
        pass


def test_a_plugin_executor_s_bare_futures_are_waited_for_without_polling(
    stages: PluginHost,
) -> None:
    BARRIER["y"] = threading.Barrier(2, timeout=5)
    e = exp(stage("a"), stage("b", "record", "a", barrier="y"), stage("c", barrier="y"))
    out = run_pipeline(e, Job(id="run-bare"), host=stages, executor=_BareThreadExecutor())
    assert set(out) == {"a", "b", "c"}
    assert out["b"]["saw"] == ["a"]

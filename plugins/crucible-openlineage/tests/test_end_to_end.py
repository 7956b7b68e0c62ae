"""Real runs through the installed plugin: ``crucible train`` on the toy backend of the
core tests, with the sink configured only by environment variables."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from crucible_openlineage import runtime
from crucible_openlineage.build import run_uuid

from crucible_core.cli.main import main
from crucible_core.errors import BackendError
from crucible_core.ir import Full, ModelSpec, TrainingJob, encode
from crucible_core.ir.training import AdamW, CheckpointPolicy, DatasetSpec, LearningConfig
from crucible_core.plugins import PluginHost
from crucible_core.testing import check_light_import
from crucible_core.train.run import run_training
from tests.toy_backend import TEXTS, ToySession, backend_with


def _job(dataset: Path, backend: str = "toyfile") -> TrainingJob:
    return TrainingJob(
        backend=backend,
        model_spec=ModelSpec(name="toy"),
        adapter_config=Full(),
        dataset_spec=DatasetSpec(uri=str(dataset)),
        learning_config=LearningConfig(optimizer=AdamW(lr=0.02), batch_size=4, max_steps=8),
        checkpoint_policy=CheckpointPolicy(save_every=4, keep_last=2, save_best=False),
    )


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "rows.txt"
    path.write_text("\n".join(TEXTS))
    return path


def test_plugin_module_imports_light() -> None:
    check_light_import(
        "crucible_openlineage.plugin",
        heavy=("torch", "numpy", "openlineage", "requests", "attr", "httpx2", "jsonschema"),
    )


def test_crucible_train_writes_start_and_complete_with_hash_and_checkpoint(
    host: PluginHost,
    crucible_home: Path,
    dataset: Path,
    tmp_path: Path,
    validate: Any,
    lineage_of: Any,
) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_bytes(encode(_job(dataset)))
    assert main(["train", str(job_file), "--job-id", "lin-ok", "--no-progress"]) == 0
    runtime.reset()  # what the process does at exit: send what is queued
    events = lineage_of(crucible_home / "openlineage.jsonl")
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    for e in events:
        validate(e)
        assert e["run"]["runId"] == run_uuid("lin-ok")
        [data] = e["inputs"]
        assert data["name"] == str(dataset.resolve())
        digest = hashlib.sha256(dataset.read_bytes()).hexdigest()
        assert data["facets"]["version"]["datasetVersion"] == f"sha256:{digest}"
    complete = events[1]
    outputs = {(o["namespace"], o["name"]): o for o in complete["outputs"]}
    assert ("mem://sampler", "/final") in outputs  # the final (sampler) checkpoint
    state = crucible_home / "runs" / "lin-ok" / "checkpoints"
    assert ("file", str((state / "step-000008" / "state").resolve())) in outputs
    stored = [o for o in complete["outputs"] if "/artifacts/sha256/" in o["name"]]
    assert stored  # metrics.json, stored by content: its name is its sha256
    for o in stored:
        assert o["facets"]["version"]["datasetVersion"] == "sha256:" + o["name"].rsplit("/", 1)[1]
    crucible = complete["run"]["facets"]["crucible"]
    assert crucible["status"] == "succeeded"
    assert crucible["job_kind"] == "training_run"
    assert len(crucible["config_digest"]) == 64


class _Broken(ToySession):
    def forward_backward(self, batch: Sequence[Any], loss: Any) -> Any:
        raise BackendError("the accelerator fell over")


def test_a_failing_run_gives_fail_with_the_error(
    host: PluginHost, crucible_home: Path, dataset: Path, validate: Any, lineage_of: Any
) -> None:
    import types

    from crucible_core import hookimpl
    from tests.toy_backend import CAPS

    def register_backends(register: Any) -> None:
        register("broken", lambda: backend_with(_Broken), capabilities=CAPS, summary="fails")

    host.add_plugin(
        types.SimpleNamespace(register_backends=hookimpl(register_backends)), name="broken"
    )
    with pytest.raises(BackendError):
        run_training(_job(dataset, backend="broken"), job_id="lin-fail", host=host)
    runtime.reset()
    events = lineage_of(crucible_home / "openlineage.jsonl")
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    validate(events[1])
    assert "the accelerator fell over" in events[1]["run"]["facets"]["errorMessage"]["message"]


def test_a_hanging_lineage_server_does_not_hold_up_the_run(
    host: PluginHost,
    crucible_home: Path,
    dataset: Path,
    hanging_endpoint: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRUCIBLE_OPENLINEAGE_TRANSPORT", "http")
    monkeypatch.setenv("CRUCIBLE_OPENLINEAGE_URL", hanging_endpoint.url)
    monkeypatch.setenv("CRUCIBLE_OPENLINEAGE_TIMEOUT_S", "60")
    monkeypatch.setenv("CRUCIBLE_OPENLINEAGE_QUEUE", "1")
    monkeypatch.setenv("CRUCIBLE_OPENLINEAGE_FLUSH_S", "1")
    job = msgspec.structs.replace(_job(dataset), job_id="")
    began = time.monotonic()
    first = run_training(job, job_id="hang-1", host=host)
    second = run_training(job, job_id="hang-2", host=host)
    ran = time.monotonic() - began
    sink = runtime.current()
    assert sink is not None
    closing = time.monotonic()
    runtime.reset()
    assert time.monotonic() - closing < 3.0  # bounded by FLUSH_S, not by the 60 s timeout
    assert first.steps == second.steps == 8
    assert ran < 30.0  # two toy runs; the server would hold each request 30 s
    assert sink.stats.dropped >= 1
    from crucible_core.records.events import read_telemetry

    warned = [e for e in read_telemetry("hang-2") if e.kind == "openlineage.dropped"]
    assert warned
    assert warned[0].data["level"] == "warning"


class _Score:
    """A one-stage evaluation: stores a result file and reports a metric."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: Any) -> dict[str, Any]:
        out = ctx.run_dir / "scores.json"
        out.write_text('{"accuracy": 0.75}')
        ctx.artifacts.put(out, type="metrics", name="scores")
        ctx.emit("eval.metric", accuracy=0.75)
        return {}


def test_an_experiment_cell_names_its_parent_run(
    host: PluginHost, crucible_home: Path, dataset: Path, validate: Any, lineage_of: Any
) -> None:
    import types
    from datetime import UTC, datetime

    from crucible_core import hookimpl
    from crucible_core.ir.experiment import Experiment, StageDef
    from crucible_core.ir.work import Job
    from crucible_core.pipeline.runner import run_pipeline
    from crucible_core.records.events import EventBus

    def register_stages(register: Any) -> None:
        register("score", _Score)

    host.add_plugin(types.SimpleNamespace(register_stages=hookimpl(register_stages)), name="s")
    experiment = Experiment(
        id="grid",
        name="lr sweep",
        dataset=DatasetSpec(uri=str(dataset)),
        stages=[StageDef(name="score", uses="score")],
    )
    with EventBus(host=host) as bus:
        for i in range(2):
            job = Job(
                id=f"cell-{i}",
                kind="experiment_step",
                metadata={"parent_job_id": "sweep-7"},
                created_at=datetime.now(UTC),
            )
            run_pipeline(experiment, job, host=host, bus=bus)
    runtime.reset()
    events = lineage_of(crucible_home / "openlineage.jsonl")
    by_run: dict[str, list[str]] = {}
    for e in events:
        validate(e)
        by_run.setdefault(e["run"]["runId"], []).append(e["eventType"])
        parent = e["run"]["facets"]["parent"]
        assert parent["run"]["runId"] == run_uuid("sweep-7")
        assert e["job"]["name"] == "lr sweep"
    assert by_run == {
        run_uuid("cell-0"): ["START", "COMPLETE"],
        run_uuid("cell-1"): ["START", "COMPLETE"],
    }
    [scores] = [o for o in events[-1]["outputs"] if "/artifacts/sha256/" in o["name"]]
    digest = hashlib.sha256(b'{"accuracy": 0.75}').hexdigest()
    assert scores["facets"]["version"]["datasetVersion"] == f"sha256:{digest}"
    assert events[-1]["run"]["facets"]["crucible"]["job_kind"] == "experiment_step"


_FAILS_LEFT = {"n": 0}


class _FlakyScore(_Score):
    """Fails (retryably) while ``_FAILS_LEFT`` says so, then scores."""

    def run(self, ctx: Any) -> dict[str, Any]:
        if _FAILS_LEFT["n"] > 0:
            _FAILS_LEFT["n"] -= 1
            raise BackendError("the judge timed out", retryable=True)
        return super().run(ctx)


def test_a_worker_retry_is_a_new_run_and_each_run_ends_once(
    host: PluginHost, crucible_home: Path, validate: Any, lineage_of: Any
) -> None:
    import types

    from crucible_core import hookimpl
    from crucible_core.ir.codec import to_builtins
    from crucible_core.ir.experiment import Experiment, StageDef
    from crucible_core.ir.work import Constraints, Job, RetryPolicy
    from crucible_core.queue.scheduler import Scheduler
    from crucible_core.queue.worker import Worker

    def register_stages(register: Any) -> None:
        register("flaky", _FlakyScore)

    host.add_plugin(types.SimpleNamespace(register_stages=hookimpl(register_stages)), name="f")
    _FAILS_LEFT["n"] = 1
    experiment = Experiment(id="ev", name="judge", stages=[StageDef(name="s", uses="flaky")])
    policy = RetryPolicy(max_attempts=3, initial_delay_ms=0, max_delay_ms=0)
    sched = Scheduler(sync="normal")
    try:
        sched.enqueue(
            Job(
                id="eval-1",
                kind="evaluation",
                payload=to_builtins(experiment),
                constraints=Constraints(retry_policy=policy),
            )
        )
        worker = Worker(sched, host=host, lease_s=5.0, heartbeat_s=0.05, poll_s=0.02)
        worker.run(exit_when_idle=True)
        assert sched.get("eval-1").status == "succeeded"
    finally:
        sched.close()
    runtime.reset()
    events = lineage_of(crucible_home / "openlineage.jsonl")
    for e in events:
        validate(e)
    seq = [(e["run"]["runId"], e["eventType"]) for e in events]
    assert seq == [
        (run_uuid("eval-1"), "START"),
        (run_uuid("eval-1"), "FAIL"),
        (run_uuid("eval-1", 2), "START"),
        (run_uuid("eval-1", 2), "COMPLETE"),
    ]
    assert [e["run"]["facets"]["crucible"]["attempt"] for e in events] == [1, 1, 2, 2]


_SCRIPT = """
import sys
from crucible_core.cli.main import main
from crucible_core.plugins import PluginHost, reset_host
from crucible_openlineage import plugin
from tests.toy_backend import toy_plugin

host = PluginHost(autoload=False)
host.add_plugin(toy_plugin(), name="toy")
host.add_plugin(plugin, name="openlineage")
reset_host(host)
sys.exit(main(["train", sys.argv[1], "--job-id", "proc", "--no-progress"]))
"""


def _train_in_a_process(
    job_file: Path, home: Path, extra: dict[str, str]
) -> tuple[int, float, str]:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "CRUCIBLE_HOME": str(home), "PYTHONPATH": str(root), **extra}
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(job_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=root,
    )
    return proc.returncode, time.monotonic() - began, proc.stderr


def test_a_process_sends_its_lineage_at_exit(
    tmp_path: Path, dataset: Path, validate: Any, lineage_of: Any
) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_bytes(encode(_job(dataset)))
    code, _, err = _train_in_a_process(job_file, tmp_path / "home", {})
    assert code == 0, err
    events = lineage_of(tmp_path / "home" / "openlineage.jsonl")
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    for e in events:
        validate(e)


def test_a_hanging_server_delays_the_exit_by_flush_s_at_most(
    tmp_path: Path, dataset: Path, hanging_endpoint: Any
) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_bytes(encode(_job(dataset)))
    code, took, err = _train_in_a_process(
        job_file,
        tmp_path / "home",
        {
            "CRUCIBLE_OPENLINEAGE_TRANSPORT": "http",
            "CRUCIBLE_OPENLINEAGE_URL": hanging_endpoint.url,
            "CRUCIBLE_OPENLINEAGE_TIMEOUT_S": "60",
            "CRUCIBLE_OPENLINEAGE_FLUSH_S": "2",
        },
    )
    assert code == 0, err
    assert took < 20.0  # the run plus 2 s of flushing; the server holds a request 30 s
    assert (tmp_path / "home" / "runs" / "proc" / "metrics.json").exists()

"""The training workflow end to end on the toy backend: stages, run directory, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from crucible_core.cli.main import main
from crucible_core.errors import BackendError, BudgetExhausted
from crucible_core.ir import (
    AdamW,
    Budget,
    CheckpointPolicy,
    DatasetSpec,
    Full,
    LearningConfig,
    ModelSpec,
    TrainingJob,
    encode,
)
from crucible_core.plugins import PluginHost
from crucible_core.records.artifacts import read_manifest, verify_run
from crucible_core.train.plan import make_plan
from crucible_core.train.run import run_training
from crucible_core.train.state import read_loop_state
from tests.toy_backend import CAPS, ToySession, backend_with, toy_plugin


@pytest.fixture
def toy(host: PluginHost, crucible_home: Path) -> PluginHost:
    host.add_plugin(toy_plugin(), name="toy")
    return host


def make_job(**changes: Any) -> TrainingJob:
    job = TrainingJob(
        backend="toy",
        model_spec=ModelSpec(name="toy"),
        adapter_config=Full(),
        dataset_spec=DatasetSpec(uri="mem"),
        learning_config=LearningConfig(optimizer=AdamW(lr=0.02), batch_size=4, max_steps=12),
        checkpoint_policy=CheckpointPolicy(save_every=4, keep_last=2, save_best=False),
    )
    return msgspec.structs.replace(job, **changes)


def test_run_writes_a_complete_run_directory(toy: PluginHost, crucible_home: Path) -> None:
    outcome = run_training(make_job(), job_id="run-a", host=toy)
    assert outcome.final_loss is not None
    assert outcome.initial_loss is not None
    assert outcome.final_loss < outcome.initial_loss
    assert (outcome.steps, outcome.total_steps) == (12, 12)
    run = crucible_home / "runs" / "run-a"
    manifest = read_manifest(run)
    assert manifest["status"] == "succeeded"
    assert manifest["training_job"]["learning_config"]["max_steps"] == 12
    assert manifest["dataset"]["hash"].startswith("sha256:")
    assert manifest["template"] == {"name": "bytes", "hash": "sha256:bytes"}
    assert manifest["seed"] == 0
    assert [c["step"] for c in manifest["checkpoints"]] == [8, 12]  # keep_last = 2
    assert manifest["sampler_checkpoint"]["kind"] == "sampler"
    assert manifest["training"]["evaluation"]["split"] == "validation"
    assert list(manifest["stages"]) == ["prepare", "train", "evaluate", "save", "log_metrics"]
    kinds = [
        json.loads(line)["kind"] for line in (run / "telemetry.jsonl").read_text().splitlines()
    ]
    assert kinds.count("train.step") == 12
    assert "eval.metric" in kinds
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["losses"]) == 12
    assert read_loop_state(run).step == 12
    assert verify_run(run).ok


def test_budget_stop_then_resume_continues_the_same_curve(
    toy: PluginHost, crucible_home: Path
) -> None:
    full = run_training(make_job(), job_id="full", host=toy)
    full_losses = json.loads((crucible_home / "runs/full/metrics.json").read_text())["losses"]
    with pytest.raises(BudgetExhausted):
        run_training(make_job(budget=Budget(max_tokens=1500)), job_id="cut", host=toy)
    state = read_loop_state(crucible_home / "runs" / "cut")
    assert 0 < state.step < 12
    resumed = run_training(make_job(), job_id="cut", host=toy, resume=state)
    assert resumed.steps == 12
    tail = json.loads((crucible_home / "runs/cut/metrics.json").read_text())["losses"]
    assert tail == pytest.approx(full_losses[state.step :], abs=1e-9)
    assert full.final_loss == pytest.approx(resumed.final_loss, abs=1e-9)
    assert read_manifest(crucible_home / "runs" / "cut")["resumed_from_step"] == state.step


def test_plan_refuses_every_unsupported_setting_at_once(toy: PluginHost) -> None:
    from crucible_core.ir import LoRA, Loss, Scheduler
    from crucible_core.ir.training import SGD

    job = make_job(
        adapter_config=LoRA(),
        model_spec=ModelSpec(name="toyy", max_seq_len=4096),
        learning_config=LearningConfig(
            optimizer=SGD(), scheduler=Scheduler(name="cosine"), loss=Loss(name="dpo")
        ),
        checkpoint_policy=CheckpointPolicy(format="gguf"),
    )
    plan = make_plan(job, host=toy)
    assert not plan.ok
    fields = {p.field for p in plan.problems}
    assert fields == {
        "$.adapter_config.kind",
        "$.learning_config.optimizer.name",
        "$.learning_config.loss.name",
        "$.checkpoint_policy.format",
        "$.model_spec.name",
        "$.model_spec.max_seq_len",
    }
    model = next(p for p in plan.problems if p.field == "$.model_spec.name")
    assert model.hint == "did you mean 'toy'?"
    assert all(p.backend == "toy" for p in plan.problems)
    fmt = next(p for p in plan.problems if p.field == "$.checkpoint_policy.format")
    assert fmt.supported == ["safetensors"]


def test_plan_counts_data_and_estimates(toy: PluginHost) -> None:
    plan = make_plan(make_job(), host=toy)
    assert plan.ok
    assert (plan.rows, plan.validation_rows, plan.steps) == (36, 4, 12)
    assert plan.tokens_per_epoch is not None
    assert plan.tokens_to_train is not None
    assert plan.tokens_to_train > plan.tokens_per_epoch  # 12 steps x 4 > 36 rows
    assert plan.duration_basis == "measured"
    assert plan.duration_s is not None
    assert plan.duration_s > 0
    assert [c.step for c in plan.checkpoints if c.kind == "state"] == [4, 8, 12]
    assert plan.cost == 0.0


def test_plan_unknown_backend(toy: PluginHost) -> None:
    plan = make_plan(make_job(backend="tooy"), host=toy)
    assert not plan.ok
    assert plan.problems[0].field == "$.backend"
    assert plan.problems[0].hint is not None
    assert "did you mean 'toy'?" in plan.problems[0].hint


def _write(tmp_path: Path, job: TrainingJob) -> Path:
    path = tmp_path / "job.toml"
    path.write_bytes(encode(job, format="toml"))
    return path


def test_cli_train_sample_runs(
    toy: PluginHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, make_job())
    assert main(["train", str(path), "--job-id", "cli-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "loss       initial" in out
    assert "crucible sample cli-run" in out
    assert main(["sample", "cli-run", "--prompt", "the cat", "--max-tokens", "5", "--json"]) == 0
    completions = json.loads(capsys.readouterr().out)
    assert len(completions[0]["tokens"]) == 5
    assert main(["runs", "list", "--json"]) == 0
    assert [r["run"] for r in json.loads(capsys.readouterr().out)] == ["cli-run"]
    assert main(["plan", str(path), "--json", "--no-measure"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 12


def test_cli_train_refuses_with_exit_2(
    toy: PluginHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crucible_core.ir import LoRA

    path = _write(tmp_path, make_job(adapter_config=LoRA()))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "$.adapter_config.kind: backend 'toy' does not support adapter 'lora'" in err
    assert not (Path(str(tmp_path)) / "runs").exists()


def test_cli_budget_stop_and_resume(
    toy: PluginHost, tmp_path: Path, capsys: pytest.CaptureFixture[str], crucible_home: Path
) -> None:
    path = _write(tmp_path, make_job(budget=Budget(max_tokens=1500)))
    assert main(["train", str(path), "--job-id", "b", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "would exceed max_tokens" in err
    assert "crucible resume b --max-tokens N" in err  # the real run id, not a placeholder
    assert read_manifest(crucible_home / "runs" / "b")["status"] == "budget_exhausted"
    assert main(["resume", "b", "--max-tokens", "100000", "--no-progress"]) == 0
    assert "steps      12/12" in capsys.readouterr().out


def test_runs_diff_reports_changed_seed(
    toy: PluginHost, capsys: pytest.CaptureFixture[str]
) -> None:
    run_training(make_job(), job_id="s0", host=toy)
    seeded = make_job(
        learning_config=LearningConfig(optimizer=AdamW(lr=0.02), batch_size=4, max_steps=12, seed=1)
    )
    run_training(seeded, job_id="s1", host=toy)
    assert main(["runs", "diff", "s0", "s1", "--json"]) == 0
    diffs = {d["key"]: (d["a"], d["b"]) for d in json.loads(capsys.readouterr().out)["differences"]}
    assert diffs["seed"] == (0, 1)
    assert diffs["training_job.learning_config.seed"] == (0, 1)
    assert "training_job.job_id" in diffs
    assert main(["runs", "diff", "s0", "s0"]) == 0
    assert "identical" in capsys.readouterr().out
    assert main(["runs", "show", "s0"]) == 0
    assert "seed = 0" in capsys.readouterr().out


def test_worker_runs_training_jobs_and_the_run_directory_is_the_one_recovery_record(
    toy: PluginHost, crucible_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crucible_core.ir import Job
    from crucible_core.queue.scheduler import Scheduler
    from crucible_core.queue.worker import Worker

    scheduler = Scheduler()
    job = Job(id="w1", kind="training_run", payload=msgspec.to_builtins(make_job()))
    scheduler.enqueue(job)
    stats = Worker(scheduler, host=toy, poll_s=0.05).run(exit_when_idle=True)
    assert stats.succeeded == 1
    done = scheduler.get("w1")
    assert done.status == "succeeded"
    assert done.result["steps"] == 12
    # The scheduler keeps no copy of where a training run resumes: trainer_state.json is it.
    assert scheduler.last_checkpoint("w1") is None
    assert read_loop_state(crucible_home / "runs" / "w1").step == 12
    assert read_manifest(crucible_home / "runs" / "w1")["status"] == "succeeded"
    assert main(["jobs", "show", "w1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["checkpoint"]
    assert (shown["kind"], shown["step"]) == ("state", 12)


def test_runs_diff_reports_changed_dataset_row_and_package_version(
    toy: PluginHost,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crucible_core.train import steps
    from tests.toy_backend import TEXTS

    first = tmp_path / "a.txt"
    first.write_text("\n".join(TEXTS))
    second = tmp_path / "b.txt"
    second.write_text("\n".join([*TEXTS[:-1], "one row changed"]))
    run_training(make_job(dataset_spec=DatasetSpec(uri=str(first))), job_id="d1", host=toy)
    real = steps._versions  # pyright: ignore[reportPrivateUsage]
    monkeypatch.setattr(steps, "_versions", lambda: {**real(), "torch": "9.9.9"})
    run_training(make_job(dataset_spec=DatasetSpec(uri=str(first))), job_id="d2", host=toy)
    run_training(make_job(dataset_spec=DatasetSpec(uri=str(second))), job_id="d3", host=toy)
    assert main(["runs", "diff", "d1", "d2", "--json"]) == 0
    keys = {d["key"]: d for d in json.loads(capsys.readouterr().out)["differences"]}
    assert keys["versions.torch"]["b"] == "9.9.9"
    assert "dataset.hash" not in keys
    assert main(["runs", "diff", "d2", "d3", "--json"]) == 0
    keys = {d["key"]: d for d in json.loads(capsys.readouterr().out)["differences"]}
    assert keys["dataset.hash"]["a"] != keys["dataset.hash"]["b"]
    assert "versions.torch" not in keys


def test_plan_context_limit_applies_to_named_models_only(toy: PluginHost) -> None:
    from crucible_core.ir import Capabilities

    caps = Capabilities(
        backend_id="toy",
        supports_training=True,
        losses=["cross_entropy"],
        adapters=["full"],
        optimizers=["adamw"],
        schedulers=["constant"],
        checkpoint_formats=["safetensors"],
        max_context_length=128,
        metadata={"models_by_path": True},
    )
    from crucible_core.train.plan import check_capabilities

    named = make_job(model_spec=ModelSpec(name="toy", max_seq_len=4096))
    by_path = make_job(model_spec=ModelSpec(name="mine", path="/models/mine", max_seq_len=4096))
    assert [p.field for p in check_capabilities(named, caps, "toy")] == ["$.model_spec.max_seq_len"]
    assert check_capabilities(by_path, caps, "toy") == []


class _ClosingSession(ToySession):
    """Counts closes; its final save fails (a backend error after training)."""

    closes = 0

    def close(self) -> None:
        type(self).closes += 1

    def save_weights_for_sampler(self, name: str) -> Any:
        if name == "final":
            raise BackendError("disk full while saving the final weights")
        return super().save_weights_for_sampler(name)


def _closing_host(toy: PluginHost) -> PluginHost:
    import types

    from crucible_core import hookimpl

    def register_backends(register: Any) -> None:
        register("closing", lambda: backend_with(_ClosingSession), capabilities=CAPS)

    toy.add_plugin(
        types.SimpleNamespace(register_backends=hookimpl(register_backends)), name="closing"
    )
    _ClosingSession.closes = 0
    return toy


def test_the_steps_run_as_stages_of_an_experiment_graph(
    toy: PluginHost, crucible_home: Path
) -> None:
    """The adapters of crucible_core.train.stages: same steps, wired as a DAG by the pipeline."""
    from crucible_core.ir import Job
    from crucible_core.pipeline.runner import run_pipeline
    from crucible_core.train.plan import training_experiment

    job = make_job()
    work = Job(id="g1", kind="training_run", payload=msgspec.to_builtins(job))
    out = run_pipeline(training_experiment(job, "g1"), work, host=toy)
    summary = out["log_metrics"]
    assert summary["steps"] == 12
    assert summary["final_loss"] < summary["initial_loss"]
    assert summary["evaluation"]["split"] == "validation"
    assert out["save"]["sampler_checkpoint"]["kind"] == "sampler"
    manifest = read_manifest(crucible_home / "runs" / "g1")
    assert set(manifest["stages"]) == {
        "load",
        "tokenize",
        "train",
        "evaluate",
        "save",
        "log_metrics",
    }
    assert manifest["status"] == "succeeded"
    assert len(json.loads((crucible_home / "runs/g1/metrics.json").read_text())["losses"]) == 12


def test_the_session_is_closed_when_a_step_after_the_loop_fails(
    toy: PluginHost, crucible_home: Path
) -> None:
    from crucible_core.ir import Job
    from crucible_core.pipeline.runner import run_pipeline
    from crucible_core.train.plan import training_experiment

    host = _closing_host(toy)
    with pytest.raises(BackendError, match="stage 'save' failed: disk full"):
        run_training(make_job(backend="closing"), job_id="c1", host=host)
    assert _ClosingSession.closes == 1
    assert read_manifest(crucible_home / "runs" / "c1")["status"] == "failed"
    # The same through the stage graph: the run scope closes the session the loop opened.
    _ClosingSession.closes = 0
    job = make_job(backend="closing")
    work = Job(id="c2", kind="training_run", payload=msgspec.to_builtins(job))
    with pytest.raises(BackendError, match="stage 'save' failed"):
        run_pipeline(training_experiment(job, "c2"), work, host=host)
    assert _ClosingSession.closes == 1

"""A real ``crucible train`` of the README main job (shortened) on crucible-local, read back
through mlflow's own client and compared with the run's telemetry.jsonl (issue 23, point 2)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from crucible_mlflow import sink as sink_module
from mlflow import MlflowClient

from crucible_core.cli.main import main
from crucible_core.plugins import PluginHost
from crucible_core.records.events import read_telemetry
from crucible_core.testing import check_light_import


def test_plugin_module_imports_light() -> None:
    check_light_import(
        "crucible_mlflow.plugin", heavy=("mlflow", "sqlalchemy", "alembic", "torch", "numpy")
    )


def _expected_metrics(job_id: str) -> dict[str, list[tuple[int, int, float]]]:
    """{key: [(step, timestamp ms, value)]} from telemetry, by the plugin's documented names."""
    out: dict[str, list[tuple[int, int, float]]] = {}

    def add(key: str, step: int, ts: float, value: object) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.setdefault(key, []).append((step, int(ts * 1000), float(value)))

    for e in read_telemetry(job_id):
        if e.kind == "train.step":
            prefix = "train"
        elif e.kind == "eval.metric":
            prefix = f"eval/{e.data['split']}"
        else:
            continue
        add(f"{prefix}/loss", e.step or 0, e.ts, e.data["loss"])
        for name, value in e.data["metrics"].items():
            add(f"{prefix}/{name}", e.step or 0, e.ts, value)
    return out


def test_a_training_run_reads_back_through_the_mlflow_client_as_its_telemetry(
    host: PluginHost, crucible_home: Path, job_file: Path, tmp_path: Path
) -> None:
    assert main(["train", str(job_file), "--job-id", "dates-ml", "--no-progress"]) == 0
    sink = sink_module.reset(60)  # what the process does at exit
    assert sink is not None
    assert (sink.dropped, sink.errors) == (0, 0)

    # The default store: SQLite under the run's CRUCIBLE_HOME.
    client = MlflowClient(tracking_uri=f"sqlite:///{crucible_home.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("crucible")
    assert experiment is not None
    assert experiment.artifact_location == (crucible_home / "mlflow-artifacts").resolve().as_uri()
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "dates-ml"
    assert run.info.status == "FINISHED"

    events = list(read_telemetry("dates-ml"))
    start = next(e for e in events if e.kind == "run.start")
    end = next(e for e in events if e.kind == "run.end")
    assert run.info.start_time == int(start.ts * 1000)
    assert run.info.end_time == int(end.ts * 1000)

    # Tags: the run id, its config digest and the sha256 of its final manifest.
    run_dir = crucible_home / "runs" / "dates-ml"
    manifest = (run_dir / "manifest.json").read_bytes()
    tags = run.data.tags
    assert tags["crucible.job_id"] == "dates-ml"
    assert tags["crucible.job_kind"] == "training_run"
    assert tags["crucible.status"] == "succeeded"
    assert tags["crucible.config_digest"] == start.data["config_digest"]
    assert tags["crucible.manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert tags["crucible.dataset_hash"] == start.data["dataset"]["hash"]

    # Params: the TrainingJob, flattened.
    params = run.data.params
    assert params["backend"] == "local"
    assert params["model_spec.name"] == "tiny-llama"
    assert params["learning_config.max_steps"] == "6"
    assert float(params["learning_config.optimizer.lr"]) == 5e-3
    assert params["learning_config.scheduler.name"] == "cosine"
    assert params["dataset_spec.validation_ratio"] == "0.1"
    assert params["checkpoint_policy.save_every"] == "3"
    import json

    assert params["job_config_digest"] == json.loads(manifest)["job_config_digest"]

    # Every metric of telemetry.jsonl, at its step and time, and nothing else.
    expected = _expected_metrics("dates-ml")
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/validation/exact_match"} <= set(
        expected
    )
    assert len(expected["train/loss"]) == 6
    assert set(run.data.metrics) == set(expected)
    for key, points in expected.items():
        history = client.get_metric_history(run.info.run_id, key)
        got = sorted((m.step, m.timestamp, m.value) for m in history)
        assert got == sorted(points), key

    # The final checkpoint (the sampler weights), byte for byte.
    final = run_dir / "checkpoints" / "final" / "sampler"
    assert tags["crucible.final_checkpoint"] == final.resolve().as_uri()
    listed = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "final_checkpoint")}
    on_disk = {p.name for p in final.iterdir()}
    assert listed == on_disk
    assert listed
    out = Path(client.download_artifacts(run.info.run_id, "final_checkpoint", str(tmp_path)))
    for p in final.iterdir():
        if p.is_file():
            assert (out / p.name).read_bytes() == p.read_bytes(), p.name


def test_two_runs_are_two_mlflow_runs_and_tracking_can_be_switched_off(
    host: PluginHost, crucible_home: Path, job_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["train", str(job_file), "--job-id", "first", "--no-progress"]) == 0
    sink_module.reset(60)
    monkeypatch.setenv("CRUCIBLE_MLFLOW_TRACKING_URI", "none")
    assert main(["train", str(job_file), "--job-id", "untracked", "--no-progress"]) == 0
    assert sink_module.reset(60) is None  # off: no sink was built
    client = MlflowClient(tracking_uri=f"sqlite:///{crucible_home.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("crucible")
    assert experiment is not None
    names = [r.info.run_name for r in client.search_runs([experiment.experiment_id])]
    assert names == ["first"]

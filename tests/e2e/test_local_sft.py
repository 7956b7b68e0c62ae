"""The LoRA chat example (examples/sft-local.toml) and exact resume after kill -9, on the
real local backend. The README's main job is tests/e2e/test_main_job.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from crucible_core.ir import TrainingJob, decode_file, encode
from tests.e2e.conftest import ROOT, Cli


def test_main_job_trains_saves_and_samples(cli: Cli) -> None:
    proc = cli("train", "examples/sft-local.toml", "--job-id", "main", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "loss       initial" in out
    initial, final = (
        float(x) for x in out.split("loss       initial ")[1].split("\n")[0].split(" -> final ")
    )
    assert final < initial
    assert 'crucible sample main --prompt "What is 12 plus 7?" --chat' in out
    run = cli.home / "runs" / "main"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert manifest["dataset"]["hash"]
    assert manifest["template"]["hash"]
    assert "torch" in manifest["versions"]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "final" in kept
    assert "step-000120" in kept
    assert len([k for k in kept if k.startswith("step-")]) <= 3  # keep_last 2 plus the best
    sampler = run / "checkpoints" / "final" / "sampler"
    assert (sampler / "adapter_config.json").exists()
    assert (sampler / "adapter_model.safetensors").exists()
    events = [e["kind"] for e in cli.telemetry("main")]
    assert events.count("train.step") == 120
    sample = cli(
        "sample", "main", "--prompt", "What is 30 minus 16?", "--chat", "--json", "--seed", "1"
    )
    assert sample.returncode == 0, sample.stderr
    completions = json.loads(sample.stdout)
    assert completions[0]["text"].strip()
    verify = cli("artifacts", "verify", "main")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    (sampler / "adapter_model.safetensors").write_bytes(b"tampered")
    tampered = cli("artifacts", "verify", "main")
    assert tampered.returncode == 1
    assert "adapter_model.safetensors" in tampered.stdout + tampered.stderr


def _small_job(tmp_path: Path, **learning: object) -> Path:
    job = decode_file(ROOT / "examples" / "sft-local.toml", TrainingJob)
    raw = {
        **encode_dict(job),
    }
    raw["learning_config"].update({"max_steps": 12, "batch_size": 4, **learning})
    raw["checkpoint_policy"].update({"save_every": 3, "keep_last": 5})
    raw["validation_spec"] = {"every_n_steps": 6}
    raw["dataset_spec"]["uri"] = str(ROOT / "examples" / "data" / "chat.jsonl")
    path = tmp_path / "small.json"
    path.write_text(json.dumps(raw))
    return path


def encode_dict(job: TrainingJob) -> dict[str, object]:
    return json.loads(encode(job))


def _losses(cli: Cli, run: str) -> dict[int, float]:
    """Loss per step; a step logged twice (before a crash and after resume) keeps the last."""
    return {e["step"]: e["data"]["loss"] for e in cli.telemetry(run) if e["kind"] == "train.step"}


def test_kill_9_then_resume_continues_the_uninterrupted_curve(cli: Cli, tmp_path: Path) -> None:
    job = _small_job(tmp_path)
    whole = cli("train", str(job), "--job-id", "whole", "--no-progress")
    assert whole.returncode == 0, whole.stderr
    reference = _losses(cli, "whole")
    assert sorted(reference) == list(range(1, 13))

    seed = random.randrange(1_000_000)
    kill_after = random.Random(seed).choice([3, 6, 9])
    state = cli.kill_9_after_checkpoint(job, "victim", kill_after)
    listed = json.loads(cli("runs", "list", "--json").stdout)
    assert {r["run"]: r["status"] for r in listed}["victim"] == "crashed"  # owner gone
    resumed = cli("resume", "victim", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming victim from step {state['step']}" in resumed.stdout
    after = _losses(cli, "victim")
    assert sorted(after) == list(range(1, 13))
    for step in range(1, 13):
        assert after[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (
            f"step {step} differs after kill -9 at checkpoint {state['step']} (seed {seed})"
        )

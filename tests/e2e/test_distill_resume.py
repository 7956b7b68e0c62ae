"""Distillation (``workflow = "distill"``) killed with SIGKILL and resumed by ``crucible resume``
continues on the uninterrupted run's curve, training on the teacher completions the first
attempt cached (the resumed attempt samples nothing).

The teacher is the student's own base model (the default teacher): what is tested is the
exact resume, not the signal (``plugins/crucible-local/tests/test_distill.py``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Cli

pytestmark = pytest.mark.timeout(300)


def _job(tmp_path: Path) -> Path:
    raw = {
        "backend": "local",
        "workflow": "distill",
        "distill": {"mode": "sft", "sampling": {"max_tokens": 8, "temperature": 1.0}},
        "model_spec": {"name": "tiny-llama", "max_seq_len": 128},
        "adapter_config": {"kind": "lora", "rank": 8, "dropout": 0.0},
        "dataset_spec": {"uri": str(ROOT / "examples" / "data" / "dates.jsonl"), "limit": 24},
        "learning_config": {
            "batch_size": 4,
            "max_steps": 12,
            "optimizer": {"name": "adamw", "lr": 1e-2},
        },
        "checkpoint_policy": {"save_every": 3, "keep_last": 5},
    }
    path = tmp_path / "distill.json"
    path.write_text(json.dumps(raw))
    return path


def _losses(cli: Cli, run: str) -> dict[int, float]:
    """Loss per step; a step logged twice (before a crash and after resume) keeps the last."""
    return {e["step"]: e["data"]["loss"] for e in cli.telemetry(run) if e["kind"] == "train.step"}


def test_kill_9_then_resume_continues_the_distillation_curve(cli: Cli, tmp_path: Path) -> None:
    job = _job(tmp_path)
    whole = cli("train", str(job), "--job-id", "whole", "--no-progress")
    assert whole.returncode == 0, whole.stderr
    reference = _losses(cli, "whole")
    assert sorted(reference) == list(range(1, 13))
    (first,) = [e for e in cli.telemetry("whole") if e["kind"] == "distill.teacher"]
    assert first["data"]["cached"] is False
    cache = cli.home / "cache" / "distill-teacher" / f"{first['data']['key']}.json"
    cache.unlink()  # the victim samples the teacher itself, and caches it

    seed = random.randrange(1_000_000)
    kill_after = random.Random(seed).choice([3, 6, 9])
    state = cli.kill_9_after_checkpoint(job, "victim", kill_after)
    resumed = cli("resume", "victim", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming victim from step {state['step']}" in resumed.stdout
    taught = [e["data"] for e in cli.telemetry("victim") if e["kind"] == "distill.teacher"]
    # First attempt: sampled (the cache was gone); the resumed one read what it cached.
    assert [t["cached"] for t in taught] == [False, True]
    assert taught[0]["key"] == taught[1]["key"] == first["data"]["key"]
    after = _losses(cli, "victim")
    assert sorted(after) == list(range(1, 13))
    for step in range(1, 13):
        assert after[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (
            f"step {step} differs after kill -9 at checkpoint {state['step']} (seed {seed})"
        )

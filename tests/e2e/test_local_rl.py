"""examples/rl-local.toml through the CLI: the reward rises, and ``crucible resume``
after kill -9 continues the uninterrupted curve (sampling overlapped with training, so
the resumed step samples the weights one step older than its checkpoint)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from crucible_core.ir import TrainingJob, decode_file, encode
from tests.e2e.conftest import ROOT, Cli


def _small_job(tmp_path: Path) -> Path:
    job = decode_file(ROOT / "examples" / "rl-local.toml", TrainingJob)
    raw = json.loads(encode(job))
    raw["learning_config"]["max_steps"] = 8
    raw["checkpoint_policy"].update({"save_every": 2, "keep_last": 5})
    raw["dataset_spec"]["uri"] = str(ROOT / "examples" / "data" / "numbers.jsonl")
    path = tmp_path / "rl.json"
    path.write_text(json.dumps(raw))
    return path


def _curve(cli: Cli, run: str) -> dict[int, tuple[float, float]]:
    """(loss, mean reward) per step; a step logged twice keeps the last."""
    return {
        e["step"]: (e["data"]["loss"], e["data"]["metrics"]["reward:mean"])
        for e in cli.telemetry(run)
        if e["kind"] == "train.step"
    }


def test_kill_9_then_resume_continues_the_uninterrupted_rl_curve(cli: Cli, tmp_path: Path) -> None:
    job = _small_job(tmp_path)
    whole = cli("train", str(job), "--job-id", "whole", "--no-progress")
    assert whole.returncode == 0, whole.stderr
    reference = _curve(cli, "whole")
    assert sorted(reference) == list(range(1, 9))

    seed = random.randrange(1_000_000)
    kill_after = random.Random(seed).choice([2, 4, 6])
    state = cli.kill_9_after_checkpoint(job, "victim", kill_after)
    resumed = cli("resume", "victim", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming victim from step {state['step']}" in resumed.stdout
    after = _curve(cli, "victim")
    assert sorted(after) == list(range(1, 9))
    for step in range(1, 9):
        assert after[step][0] == pytest.approx(reference[step][0], rel=1e-5, abs=1e-6), (
            f"step {step}: loss differs after kill -9 at checkpoint {state['step']} (seed {seed})"
        )
        assert after[step][1] == pytest.approx(reference[step][1], abs=1e-9), (
            f"step {step}: reward differs after kill -9 at checkpoint {state['step']} (seed {seed})"
        )

"""examples/rl-local.toml through the CLI: the reward rises, and ``crucible resume``
after kill -9 continues the uninterrupted curve (sampling overlapped with training, so
the resumed step samples the weights one step older than its checkpoint)."""

from __future__ import annotations

import json
import random
import signal
import time
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
    victim = cli.popen("train", str(job), "--job-id", "victim", "--no-progress")
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            saved = [
                e["step"]
                for e in cli.telemetry("victim")
                if e["kind"] == "train.checkpoint" and e["data"].get("checkpoint_kind") == "state"
            ]
            if saved and max(saved) >= kill_after:
                break
            if victim.poll() is not None:
                pytest.fail(f"the run ended before step {kill_after}: {victim.stderr.read()}")
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.wait(timeout=30)
        assert victim.stdout is not None
        assert victim.stderr is not None
        victim.stdout.close()
        victim.stderr.close()
    state = json.loads((cli.home / "runs" / "victim" / "trainer_state.json").read_text())
    assert state["step"] >= kill_after
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

"""Exact resume through the Tinker-compatible server after the client is killed with SIGKILL.

The training client (`crucible train ... --backend tinker`) runs in a subprocess
and is killed right after a random state checkpoint; `crucible resume` then
reloads the SDK's state checkpoint (``tinker://.../weights/step-N``) and must
reproduce the uninterrupted run's loss at every step: no step skipped, no
optimizer step applied twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from crucible_tinker.server import TinkerServer

from crucible_core.ir import TrainingJob, decode_file, encode

pytestmark = pytest.mark.timeout(400)

REPO = Path(__file__).resolve().parents[3]


def _job(tmp_path: Path) -> Path:
    job = decode_file(REPO / "examples" / "sft-local.toml", TrainingJob)
    raw: dict[str, Any] = json.loads(encode(job))
    raw["backend"] = "tinker"
    raw["learning_config"].update({"max_steps": 12, "batch_size": 4})
    raw["checkpoint_policy"].update({"save_every": 3, "keep_last": 5})
    raw["validation_spec"] = None
    raw["dataset_spec"]["uri"] = str(REPO / "examples" / "data" / "chat.jsonl")
    path = tmp_path / "job.json"
    path.write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "crucible_core.cli.main", *args]


def _telemetry(home: Path, run: str) -> list[dict[str, Any]]:
    path = home / "runs" / run / "telemetry.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _losses(home: Path, run: str) -> dict[int, float]:
    return {
        e["step"]: e["data"]["loss"] for e in _telemetry(home, run) if e["kind"] == "train.step"
    }


def test_kill_9_then_resume_through_the_server(server: TinkerServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {
        **os.environ,
        "CRUCIBLE_HOME": str(home),
        "TINKER_BASE_URL": server.url,
        "TINKER_API_KEY": server.api_key,
        "CRUCIBLE_CALL_DEADLINE_S": "90",
    }
    job = _job(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _cli(*args), env=env, capture_output=True, text=True, timeout=300, check=False
        )

    whole = run("train", str(job), "--job-id", "whole", "--no-progress")
    assert whole.returncode == 0, whole.stderr
    reference = _losses(home, "whole")
    assert sorted(reference) == list(range(1, 13))

    seed = random.randrange(1_000_000)
    kill_after = random.Random(seed).choice([3, 6, 9])
    victim = subprocess.Popen(
        _cli("train", str(job), "--job-id", "victim", "--no-progress"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            saved = [
                e["step"]
                for e in _telemetry(home, "victim")
                if e["kind"] == "train.checkpoint" and e["data"].get("checkpoint_kind") == "state"
            ]
            if saved and max(saved) >= kill_after:
                break
            assert victim.poll() is None, f"the run ended before step {kill_after}"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.wait(timeout=30)
        assert victim.stderr is not None
        victim.stderr.close()
    state = json.loads((home / "runs" / "victim" / "trainer_state.json").read_text())
    assert state["checkpoints"][-1]["ref"]["uri"].startswith("tinker://")
    resumed = run("resume", "victim", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming victim from step {state['step']}" in resumed.stdout
    after = _losses(home, "victim")
    assert sorted(after) == list(range(1, 13))
    for step in range(1, 13):
        assert after[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (
            f"step {step} differs after kill -9 at checkpoint {state['step']} (seed {seed})"
        )
    assert server.api_key not in (home / "runs" / "victim" / "manifest.json").read_text()

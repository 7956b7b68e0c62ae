"""End-to-end tests: the real plugins (crucible-local, crucible-datasets) through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    """Runs `crucible` in a subprocess with an isolated CRUCIBLE_HOME, bounded in time."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "CRUCIBLE_HOME": str(home), "CRUCIBLE_STRICT_PLUGINS": "1"}
        self.env.pop("CRUCIBLE_PLUGINS", None)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "crucible_core.cli.main", *args]

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def telemetry(self, run: str) -> list[dict[str, Any]]:
        path = self.home / "runs" / run / "telemetry.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def kill_9_after_checkpoint(self, job: Path, run: str, step: int) -> dict[str, Any]:
        """Start ``crucible train JOB --job-id RUN``, SIGKILL it once a state checkpoint of
        step ``step`` or later is logged, and return the run's ``trainer_state.json``."""
        victim = self.popen("train", str(job), "--job-id", run, "--no-progress")
        deadline = time.monotonic() + 240
        try:
            while time.monotonic() < deadline:
                saved = [
                    e["step"]
                    for e in self.telemetry(run)
                    if e["kind"] == "train.checkpoint"
                    and e["data"].get("checkpoint_kind") == "state"
                ]
                if saved and max(saved) >= step:
                    break
                if victim.poll() is not None:
                    assert victim.stderr is not None
                    pytest.fail(f"the run ended before step {step}: {victim.stderr.read()}")
                time.sleep(0.05)
            victim.send_signal(signal.SIGKILL)
        finally:
            victim.wait(timeout=30)
            assert victim.stdout is not None
            assert victim.stderr is not None
            victim.stdout.close()
            victim.stderr.close()
        state: dict[str, Any] = json.loads(
            (self.home / "runs" / run / "trainer_state.json").read_text()
        )
        assert state["step"] >= step
        return state


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")

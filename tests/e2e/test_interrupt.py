"""Stopping and damaging runs for real: signals to `crucible train`, a corrupted checkpoint, nan.

Every run here is a real `crucible train` subprocess on the local backend. The
job uses a constant learning rate, so a shorter run's loss curve is a prefix
of a longer one's and one reference run serves every comparison.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from crucible_core.ir import TrainingJob, decode_file, encode
from tests.e2e.conftest import ROOT, Cli

STEPS = 30


def _job(tmp_path: Path, name: str = "job", **learning: Any) -> Path:
    raw: dict[str, Any] = json.loads(
        encode(decode_file(ROOT / "examples" / "sft-local.toml", TrainingJob))
    )
    raw["learning_config"].update(
        {"max_steps": STEPS, "batch_size": 4, "scheduler": {"name": "constant"}, **learning}
    )
    raw["checkpoint_policy"].update({"save_every": 3, "keep_last": 5})
    raw["validation_spec"] = {"every_n_steps": 6}
    raw["dataset_spec"]["uri"] = str(ROOT / "examples" / "data" / "chat.jsonl")
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    return path


def _losses(cli: Cli, run: str) -> dict[int, float]:
    """Loss per step; a step logged twice (before a stop and after resume) keeps the last."""
    return {e["step"]: e["data"]["loss"] for e in cli.telemetry(run) if e["kind"] == "train.step"}


def _status(cli: Cli, run: str) -> str:
    listed = cli("runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return {r["run"]: r["status"] for r in json.loads(listed.stdout)}[run]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """The loss curve of the job trained without interruption."""
    tmp = tmp_path_factory.mktemp("reference")
    cli = Cli(tmp / "home")
    done = cli("train", str(_job(tmp)), "--job-id", "whole", "--no-progress")
    assert done.returncode == 0, done.stderr
    losses = _losses(cli, "whole")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def _start_and_wait(cli: Cli, job: Path, run: str, steps: int) -> subprocess.Popen[str]:
    proc = cli.popen("train", str(job), "--job-id", run, "--no-progress")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = [e for e in cli.telemetry(run) if e["kind"] == "train.step"]
        if len(done) >= steps:
            return proc
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {steps}: {proc.communicate()[1]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no step {steps} within 240 s")


def _assert_curve(after: dict[int, float], reference: dict[int, float], upto: int) -> None:
    assert sorted(after) == list(range(1, upto + 1))
    for step in range(1, upto + 1):
        assert after[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_a_step_boundary_with_a_checkpoint_and_resume_continues(
    cli: Cli, tmp_path: Path, reference: dict[int, float], signum: signal.Signals
) -> None:
    proc = _start_and_wait(cli, _job(tmp_path), "sig", steps=4)
    sent = time.time()
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    state = json.loads((cli.home / "runs" / "sig" / "trainer_state.json").read_text())
    steps = [e for e in cli.telemetry("sig") if e["kind"] == "train.step"]
    # Stopped at a step boundary: the checkpoint is of the last step trained, and the
    # steps queued behind the one being computed were withdrawn (one more step is
    # allowed: a step can end just before the signal and be logged just after it).
    assert state["step"] == steps[-1]["step"] < STEPS
    assert len([e for e in steps if e["ts"] > sent]) <= 2
    assert f"interrupted after step {state['step']}; checkpoint saved" in err
    assert "crucible resume sig\n" in err
    assert _status(cli, "sig") == "interrupted"
    stopped = [e for e in cli.telemetry("sig") if e["kind"] == "train.stopped"]
    assert stopped[-1]["data"]["reason"] == "interrupted"
    assert cli("artifacts", "verify", "sig").returncode == 0
    resumed = cli("resume", "sig", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming sig from step {state['step']}" in resumed.stdout
    assert _status(cli, "sig") == "succeeded"
    _assert_curve(_losses(cli, "sig"), reference, STEPS)


def test_a_second_signal_exits_at_once_and_the_run_shows_crashed_then_resumes(
    cli: Cli, tmp_path: Path
) -> None:
    # Larger batches make a step long enough for the second signal to land inside it.
    proc = _start_and_wait(cli, _job(tmp_path, batch_size=48), "twice", steps=4)
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    line = ""
    while "stopping run twice" not in line:  # the first signal was handled
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "crucible train ended before handling SIGTERM"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "exiting now without a new checkpoint" in err
    assert "crucible resume twice" in err
    manifest = json.loads((cli.home / "runs" / "twice" / "manifest.json").read_text())
    assert manifest["status"] == "running"  # nobody was left to write the end
    assert manifest["owner"]["pid"] == proc.pid
    assert _status(cli, "twice") == "crashed"
    show = cli("runs", "show", "twice")
    assert "status = 'crashed'" in show.stdout
    resumed = cli("resume", "twice", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert _status(cli, "twice") == "succeeded"
    assert sorted(_losses(cli, "twice")) == list(range(1, STEPS + 1))


def test_resume_refuses_a_corrupted_checkpoint_and_falls_back_to_a_verified_one(
    cli: Cli, tmp_path: Path, reference: dict[int, float]
) -> None:
    first = cli("train", str(_job(tmp_path, max_steps=9)), "--job-id", "bad", "--no-progress")
    assert first.returncode == 0, first.stderr
    weights = cli.home / "runs/bad/checkpoints/step-000009/state/trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one flipped bit in the tensor data: loadable, silently wrong
    weights.write_bytes(bytes(data))
    verify = cli("artifacts", "verify", "bad")
    assert verify.returncode == 1
    assert "ALTERED" in verify.stdout + verify.stderr
    resumed = cli("resume", "bad", "--max-steps", "12", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoint of step 9 failed its sha256 check" in resumed.stderr
    assert "trainable.safetensors ALTERED" in resumed.stderr
    assert "resuming from step 6 instead" in resumed.stderr
    assert "resuming bad from step 6\n" in resumed.stdout  # not the corrupted step 9
    after = _losses(cli, "bad")
    _assert_curve(after, reference, 12)  # steps 7-9 were trained again from step 6
    assert cli("artifacts", "verify", "bad").returncode == 0  # step 9 was saved afresh


def test_a_non_finite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(
    cli: Cli, tmp_path: Path
) -> None:
    # Full fine-tuning with plain SGD at lr 30 blows up within a few steps, for real.
    job = json.loads(_job(tmp_path).read_text())
    job["adapter_config"] = {"kind": "full"}
    job["learning_config"]["optimizer"] = {"name": "sgd", "lr": 30.0}
    job["checkpoint_policy"].update({"save_every": 1, "keep_last": 10})
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(job))
    proc = cli("train", str(path), "--job-id", "nan", "--no-progress")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "(not finite); training stopped" in proc.stderr
    bad = max(e["step"] for e in cli.telemetry("nan") if e["kind"] == "train.stopped")
    assert 2 < bad < STEPS
    assert _status(cli, "nan") == "failed"
    state = json.loads((cli.home / "runs" / "nan" / "trainer_state.json").read_text())
    # The weights after step bad-1 produced the nan: its checkpoint is gone too.
    assert state["step"] == bad - 2
    assert f"the last good checkpoint (step {bad - 2}) is kept" in proc.stderr
    kept = sorted(p.name for p in (cli.home / "runs" / "nan" / "checkpoints").iterdir())
    assert kept[-1] == f"step-{bad - 2:06d}"
    manifest = json.loads((cli.home / "runs" / "nan" / "manifest.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == list(range(1, bad - 1))
    assert "sampler_checkpoint" not in manifest
    assert cli("artifacts", "verify", "nan").returncode == 0

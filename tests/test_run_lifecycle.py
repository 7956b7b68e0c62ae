"""A run's status, ownership, resume overrides, checkpoint integrity and retiring, in process.

The toy backend (``toyfile`` writes its state checkpoints as files) keeps
these fast; the same behaviours on the real local backend with real signals
are in ``tests/e2e/test_interrupt.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from crucible_core.cli.main import main
from crucible_core.errors import (
    BudgetExhausted,
    Cancelled,
    Conflict,
    IntegrityError,
)
from crucible_core.ir import AdamW, Budget, CheckpointPolicy, Job, LearningConfig
from crucible_core.pipeline.cancel import CancelFlag
from crucible_core.plugins import PluginHost
from crucible_core.records.artifacts import read_manifest, verify_run
from crucible_core.records.events import EventBus
from crucible_core.records.runstatus import RunLock, effective_status, status_for
from crucible_core.train.run import run_training
from crucible_core.train.state import read_loop_state
from tests.test_training_workflow import _write, make_job
from tests.toy_backend import toy_plugin


@pytest.fixture
def toy(host: PluginHost, crucible_home: Path) -> PluginHost:
    host.add_plugin(toy_plugin(), name="toy")
    return host


def _runs(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert main(["runs", "list", "--json"]) == 0
    return {r["run"]: r["status"] for r in json.loads(capsys.readouterr().out)}


# -- one status vocabulary -------------------------------------------------------------


def test_a_budget_stop_without_a_job_id_is_budget_exhausted_and_names_the_run(
    toy: PluginHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, make_job(budget=Budget(max_tokens=1500)))
    assert main(["train", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    (run,) = _runs(capsys).items()
    assert run[1] == "budget_exhausted"
    assert f"crucible resume {run[0]} --max-tokens N" in err
    assert "RUN" not in err


@pytest.mark.parametrize(
    ("reason", "status"), [("cancelled", "cancelled"), ("interrupted", "interrupted")]
)
def test_a_cancel_is_cancelled_and_a_signal_interrupted_with_a_checkpoint(
    toy: PluginHost, crucible_home: Path, reason: str, status: str
) -> None:
    flag = CancelFlag()

    def stop_at_step_3(event: Any) -> None:
        if event.kind == "train.step" and event.step == 3:
            flag.set(reason)

    with EventBus(host=toy) as bus:
        bus.subscribe(stop_at_step_3, name="stopper")
        with pytest.raises(Cancelled) as info:
            run_training(make_job(), job_id="c", host=toy, bus=bus, cancel=flag)
    assert info.value.details["reason"] == reason
    run = crucible_home / "runs" / "c"
    manifest = read_manifest(run)
    assert manifest["status"] == status
    assert effective_status(run, manifest) == status
    state = read_loop_state(run)
    assert 3 <= state.step < 12
    assert state.checkpoints[-1].step == state.step


def test_a_worker_budget_stop_gives_the_run_the_jobs_status(
    toy: PluginHost, crucible_home: Path
) -> None:
    from crucible_core.queue.scheduler import Scheduler
    from crucible_core.queue.worker import Worker

    scheduler = Scheduler()
    job = make_job(budget=Budget(max_tokens=1500))
    scheduler.enqueue(Job(id="wb", kind="training_run", payload=msgspec.to_builtins(job)))
    Worker(scheduler, host=toy, poll_s=0.05).run(exit_when_idle=True)
    assert scheduler.get("wb").status == "budget_exhausted"
    assert read_manifest(crucible_home / "runs" / "wb")["status"] == "budget_exhausted"


def test_status_for_maps_errors_and_reasons() -> None:
    assert status_for(None) == "succeeded"
    assert status_for(BudgetExhausted("x")) == "budget_exhausted"
    assert status_for(Cancelled("x", reason="interrupted")) == "interrupted"
    assert status_for(Cancelled("x"), cancel_reason="shutdown") == "interrupted"
    assert status_for(Cancelled("x"), cancel_reason="cancelled") == "cancelled"
    assert status_for(Cancelled("x", reason="timeout")) == "failed"
    assert status_for(KeyboardInterrupt()) == "interrupted"
    assert status_for(RuntimeError("x")) == "failed"


def test_ctrl_c_in_the_waiting_thread_stops_the_loop_and_records_interrupted(
    toy: PluginHost, crucible_home: Path
) -> None:
    """A library caller without signal handlers gets KeyboardInterrupt; the loop still stops.

    A real SIGINT to the main thread, whose handler is Python's default (KeyboardInterrupt).
    """
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    fired = threading.Event()
    long = make_job(
        learning_config=LearningConfig(optimizer=AdamW(lr=0.02), batch_size=4, max_steps=5000)
    )

    def interrupt_at_step_2(event: Any) -> None:
        if event.kind == "train.step" and event.step == 2 and not fired.is_set():
            fired.set()
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    with EventBus(host=toy) as bus:
        bus.subscribe(interrupt_at_step_2, name="ctrl-c")
        with pytest.raises(KeyboardInterrupt):
            run_training(long, job_id="k", host=toy, bus=bus)
    run = crucible_home / "runs" / "k"
    assert read_manifest(run)["status"] == "interrupted"
    assert 2 <= read_loop_state(run).step < 5000


# -- ownership --------------------------------------------------------------------------


def test_a_run_owned_by_a_live_process_is_refused_and_one_without_owner_is_crashed(
    toy: PluginHost, crucible_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(BudgetExhausted):
        run_training(make_job(budget=Budget(max_tokens=1500)), job_id="o", host=toy)
    run = crucible_home / "runs" / "o"
    with RunLock(run):
        assert main(["resume", "o", "--max-tokens", "100000", "--no-progress"]) == 1
        assert f"is being worked on by process {os.getpid()}" in capsys.readouterr().err
        with pytest.raises(Conflict):
            RunLock(run).__enter__()
        assert effective_status(run, {"status": "running"}) == "running"
    # The manifest says running but nobody holds the lock: the owner died.
    from crucible_core.records.manifest import RunRecord

    RunRecord(run).update(status="running")
    assert _runs(capsys)["o"] == "crashed"
    assert main(["resume", "o", "--max-tokens", "100000", "--no-progress"]) == 0
    capsys.readouterr()
    assert _runs(capsys)["o"] == "succeeded"


# -- resume overrides -------------------------------------------------------------------


def test_resume_max_steps_0_is_refused_before_the_manifest_changes(
    toy: PluginHost, tmp_path: Path, capsys: pytest.CaptureFixture[str], crucible_home: Path
) -> None:
    path = _write(tmp_path, make_job(budget=Budget(max_tokens=1500)))
    assert main(["train", str(path), "--job-id", "m", "--no-progress"]) == 1
    before = read_manifest(crucible_home / "runs" / "m")["training_job"]
    assert main(["resume", "m", "--max-steps", "0", "--no-progress"]) == 2
    assert "--max-steps 0: run m is already at step" in capsys.readouterr().err
    assert main(["resume", "m", "--max-cost", "-1", "--no-progress"]) == 2
    assert read_manifest(crucible_home / "runs" / "m")["training_job"] == before
    assert main(["resume", "m", "--max-tokens", "100000", "--no-progress"]) == 0
    assert "steps      12/12" in capsys.readouterr().out


# -- checkpoint integrity ----------------------------------------------------------------


def _file_job(**changes: Any) -> Any:
    return make_job(
        backend="toyfile",
        checkpoint_policy=CheckpointPolicy(save_every=4, keep_last=5, save_best=False),
        **changes,
    )


def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous_verified_one(
    toy: PluginHost, crucible_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = run_training(_file_job(), job_id="ref", host=toy)
    with pytest.raises(BudgetExhausted):
        run_training(_file_job(budget=Budget(max_tokens=2000)), job_id="f", host=toy)
    run = crucible_home / "runs" / "f"
    state = read_loop_state(run)
    assert [c.step for c in state.checkpoints] == [4, 8, 9]
    (run / "checkpoints" / "step-000009" / "state" / "step").write_text("999")
    assert not verify_run(run).ok
    resumed = run_training(_file_job(), job_id="f", host=toy, resume=state)
    assert "checkpoint of step 9 failed its sha256 check" in caplog.text
    assert "resuming from step 8 instead" in caplog.text
    assert read_manifest(run)["resumed_from_step"] == 8
    assert resumed.steps == 12
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-9)
    assert verify_run(run).ok


def test_resume_stops_with_a_clear_error_when_no_checkpoint_verifies(
    toy: PluginHost, crucible_home: Path
) -> None:
    with pytest.raises(BudgetExhausted):
        run_training(_file_job(budget=Budget(max_tokens=2000)), job_id="g", host=toy)
    run = crucible_home / "runs" / "g"
    for step_dir in (run / "checkpoints").iterdir():
        (step_dir / "state" / "w.npy").write_bytes(b"garbage")
    with pytest.raises(IntegrityError, match="no checkpoint of the run passes its sha256 check"):
        run_training(_file_job(), job_id="g", host=toy, resume=read_loop_state(run))
    assert read_manifest(run)["status"] == "failed"


# -- retiring and leftovers -------------------------------------------------------------


class _Crash(BaseException):
    """Stands for the process dying (a fault we cannot cause in-process for real)."""


def test_a_crash_while_retiring_a_checkpoint_leaves_no_missing_file(
    toy: PluginHost, crucible_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mocked fault: ``shutil.rmtree`` deletes, then the "process dies" before returning."""
    real = shutil.rmtree

    def delete_then_crash(path: Any, *args: Any, **kwargs: Any) -> None:
        real(path, *args, **kwargs)
        raise _Crash

    job = make_job(
        backend="toyfile",
        checkpoint_policy=CheckpointPolicy(save_every=2, keep_last=1, save_best=False),
    )
    monkeypatch.setattr(shutil, "rmtree", delete_then_crash)  # the toy backend's delete
    with pytest.raises(_Crash):
        run_training(job, job_id="r", host=toy)
    report = verify_run(crucible_home / "runs" / "r")
    assert report.missing == []
    assert report.ok


def test_leftover_temporary_files_are_removed_on_the_next_start(
    toy: PluginHost, crucible_home: Path
) -> None:
    with pytest.raises(BudgetExhausted):
        run_training(_file_job(budget=Budget(max_tokens=2000)), job_id="t", host=toy)
    run = crucible_home / "runs" / "t"
    leftovers = [run / ".manifest.json.4242.abcd1234.tmp", run / "states" / ".x.4242.ab.tmp"]
    for f in leftovers:
        f.write_text("half written")
    staging = crucible_home / "artifacts" / "tmp"
    staging.mkdir(parents=True, exist_ok=True)
    dead = staging / "999999999.0a1b2c"  # no such pid: its writer is gone
    (dead / "sub").mkdir(parents=True)
    live = staging / f"{os.getpid()}.3d4e5f"  # a live writer's copy stays
    live.write_text("in progress")
    run_training(_file_job(), job_id="t", host=toy, resume=read_loop_state(run))
    assert not any(f.exists() for f in leftovers)
    assert not dead.exists()
    assert live.exists()


def test_resume_keeps_the_learning_config_valid(
    toy: PluginHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path,
        make_job(
            budget=Budget(max_tokens=1500),
            learning_config=LearningConfig(optimizer=AdamW(lr=0.02), batch_size=4, max_steps=12),
        ),
    )
    assert main(["train", str(path), "--job-id", "v", "--no-progress"]) == 1
    capsys.readouterr()
    assert (
        main(["resume", "v", "--max-steps", "20", "--max-tokens", "100000", "--no-progress"]) == 0
    )
    assert "steps      20/20" in capsys.readouterr().out

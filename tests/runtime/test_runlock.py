"""One writer per run directory: the lock is held across real processes.

A holder process takes :class:`RunLock` and waits; this process (and the
training entry points it calls) must get a Conflict naming the holder's pid,
and the lock must come free when the holder dies, even by SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from crucible_core.errors import Conflict, exit_code_for
from crucible_core.ir import Job
from crucible_core.plugins import PluginHost
from crucible_core.queue.scheduler import Scheduler
from crucible_core.queue.worker import Worker
from crucible_core.records.runstatus import LOCK_FILE, RunLock, holder_pid, is_owned
from crucible_core.train.run import run_training
from tests.test_training_workflow import make_job
from tests.toy_backend import toy_plugin

ROOT = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, time
from crucible_core.records.runstatus import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # hold until the test closes stdin (or kills us)
print("released", flush=True)
"""


def hold(directory: Path) -> subprocess.Popen[str]:
    """A process holding the lock on ``directory`` until its stdin closes."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for stream in (p.stdin, p.stdout):
            if stream is not None:
                stream.close()


def test_held_lock_is_a_conflict_naming_the_pid(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    run = tmp_path / "run"
    holder = hold(run)
    holders.append(holder)
    assert holder_pid(run) == holder.pid
    with pytest.raises(Conflict) as info:
        RunLock(run).acquire()
    assert f"process {holder.pid}" in info.value.message
    assert repr(run.name) in info.value.message
    assert info.value.details["pid"] == holder.pid
    assert info.value.hint is not None
    assert f"kill {holder.pid}" in info.value.hint
    assert exit_code_for(info.value) == 1
    # The holder lets go: the lock is free and records the new holder.
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(10) == 0
    with RunLock(run) as lock:
        assert lock.held
        assert holder_pid(run) == os.getpid()
    assert not lock.held


def test_lock_of_a_killed_holder_is_free(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    run = tmp_path / "run"
    holder = hold(run)
    holders.append(holder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    assert (run / LOCK_FILE).exists()  # the file stays; the kernel dropped the lock
    with RunLock(run):
        assert holder_pid(run) == os.getpid()


def test_two_locks_in_one_process_conflict(tmp_path: Path) -> None:
    with RunLock(tmp_path / "r"), pytest.raises(Conflict, match=f"process {os.getpid()}"):
        RunLock(tmp_path / "r").acquire()


@pytest.fixture
def toy(host: PluginHost, crucible_home: Path) -> PluginHost:
    host.add_plugin(toy_plugin(), name="toy")
    return host


def test_run_training_refuses_a_run_directory_in_use(
    toy: PluginHost, crucible_home: Path, holders: list[subprocess.Popen[str]]
) -> None:
    """``crucible train``/``resume`` go through run_training, which takes the lock."""
    run = crucible_home / "runs" / "busy"
    holder = hold(run)
    holders.append(holder)
    with pytest.raises(Conflict, match=f"worked on by process {holder.pid}"):
        run_training(make_job(), job_id="busy", host=toy)
    assert not (run / "manifest.json").exists()  # nothing was written beside the holder
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(10)
    assert run_training(make_job(), job_id="busy", host=toy).steps == 12


def test_worker_training_job_refuses_a_run_directory_in_use(
    toy: PluginHost, crucible_home: Path, holders: list[subprocess.Popen[str]]
) -> None:
    scheduler = Scheduler(sync="normal")
    scheduler.enqueue(Job(id="w1", kind="training_run", payload=msgspec.to_builtins(make_job())))
    holder = hold(crucible_home / "runs" / "w1")
    holders.append(holder)
    Worker(scheduler, host=toy, poll_s=0.05).run(exit_when_idle=True)
    job = scheduler.get("w1")
    assert job.status == "failed"
    assert job.error is not None
    assert job.error.code == "conflict"
    assert f"process {holder.pid}" in job.error.message
    assert not (crucible_home / "runs" / "w1" / "manifest.json").exists()
    scheduler.close()


def test_is_owned_tells_whether_the_run_is_held_without_waiting(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "owned"
    assert is_owned(run) is None  # no lock file: cannot tell
    with RunLock(run):
        assert is_owned(run) is True
    assert is_owned(run) is False

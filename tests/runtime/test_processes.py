"""Real worker processes against one SQLite file: kill -9, many workers, signals.

Each worker is ``python -m crucible_core.cli.main worker`` in its own
process, exactly as a user starts it; the jobs are ``custom`` jobs from
:mod:`tests.runtime.jobs` that leave marker files, so the test can tell which
process ran what and how often.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crucible_core.ir.work import TERMINAL_STATUSES, Job
from crucible_core.queue.scheduler import Scheduler
from crucible_core.records.events import read_telemetry

from . import jobs

ROOT = Path(__file__).resolve().parents[2]
TARGET = jobs.__name__


def custom(func: str, *, id: str = "", **args: object) -> Job:
    return Job(id=id, kind="custom", payload={"target": f"{TARGET}:{func}", "args": args})


def spawn(home: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CRUCIBLE_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "crucible_core.cli.main", "worker", "--poll", "0.05", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        if p.stdout:
            p.stdout.close()
        if p.stderr:
            p.stderr.close()


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def terminal_moves(sched: Scheduler, job_id: str) -> list[str]:
    return [t.to_status for t in sched.history(job_id) if t.to_status in TERMINAL_STATUSES]


def test_kill_9_mid_job_is_reclaimed_and_resumed(
    crucible_home: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    sched = Scheduler()
    sched.enqueue(custom("stepper", id="victim", steps=60, step_s=0.03, directory=str(tmp_path)))
    log = tmp_path / "steps.log"
    first = spawn(crucible_home, "--lease", "1")
    procs.append(first)
    wait_for(lambda: log.exists() and len(log.read_text().split("\n")) > 6, 30, "steps")
    assert sched.get("victim").status == "running"
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    killed_at = sched.last_checkpoint("victim")
    assert killed_at is not None
    assert 5 <= killed_at.step < 60

    second = spawn(crucible_home, "--lease", "1", "--exit-when-idle")
    procs.append(second)
    assert second.wait(60) == 0

    job = sched.get("victim")
    assert job.status == "succeeded"
    assert job.attempts == 2
    assert job.result == {"resumed_from": killed_at.step, "steps": 60}
    assert job.error is None  # the first attempt's lease_expired does not stick
    assert terminal_moves(sched, "victim") == ["succeeded"]
    moves = [(t.from_status, t.to_status) for t in sched.history("victim")]
    assert ("running", "queued") in moves  # the expired lease requeued it

    runs = [line.split() for line in log.read_text().splitlines()]
    by_pid = collections.defaultdict(list)
    for pid, step in runs:
        by_pid[int(pid)].append(int(step))
    assert set(by_pid) == {first.pid, second.pid}
    assert by_pid[second.pid] == list(range(killed_at.step + 1, 61))
    executed = [int(step) for _, step in runs]
    assert set(executed) == set(range(1, 61))
    assert len(executed) - 60 <= 1  # at most the step in flight at the kill runs twice
    steps_seen = {e.step for e in read_telemetry("victim") if e.kind == "train.step"}
    assert steps_seen == set(range(1, 61))
    sched.close()


def test_thousand_jobs_four_workers_each_once(
    crucible_home: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    sched = Scheduler()
    ids = [
        j.id
        for j in sched.enqueue_many([custom("mark", directory=str(tmp_path)) for _ in range(1000)])
    ]
    for _ in range(4):
        procs.append(spawn(crucible_home, "--exit-when-idle"))
    for p in procs:
        assert p.wait(150) == 0, (p.stderr.read() if p.stderr else b"").decode()

    assert sched.counts() == {"succeeded": 1000}
    runs: list[str] = []
    pids: set[str] = set()
    for f in tmp_path.glob("*.log"):
        lines = f.read_text().split()
        runs.extend(lines)
        if lines:
            pids.add(f.stem)
    counts = collections.Counter(runs)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
    assert len(pids) >= 2
    assert pids <= {str(p.pid) for p in procs}
    results = {j.result for j in sched.list()}
    assert results <= {p.pid for p in procs}
    for job_id in ids[::50]:
        assert terminal_moves(sched, job_id) == ["succeeded"]
    sched.close()


def test_sigterm_drains_and_releases_to_the_next_worker(
    crucible_home: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    sched = Scheduler()
    sched.enqueue(custom("stepper", id="long", steps=120, step_s=0.02, directory=str(tmp_path)))
    log = tmp_path / "steps.log"
    first = spawn(crucible_home, "--drain-timeout", "0.3", "--lease", "30")
    procs.append(first)
    wait_for(lambda: log.exists() and len(log.read_text().split("\n")) > 3, 30, "steps")
    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 0
    err = first.stderr.read().decode() if first.stderr else ""
    assert "SIGTERM, draining" in err
    assert "1 released" in err
    job = sched.get("long")
    assert (job.status, job.attempts) == ("queued", 0)
    ref = sched.last_checkpoint("long")
    assert ref is not None
    assert ref.step > 0
    # A long lease would have kept it for 30 s had it not been released.
    second = spawn(crucible_home, "--exit-when-idle")
    procs.append(second)
    assert second.wait(60) == 0
    job = sched.get("long")
    assert job.status == "succeeded"
    assert job.result == {"resumed_from": ref.step, "steps": 120}
    sched.close()


def test_second_signal_stops_at_once(
    crucible_home: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    sched = Scheduler()
    sched.enqueue(custom("stepper", id="s", steps=2000, step_s=0.02, directory=str(tmp_path)))
    log = tmp_path / "steps.log"
    worker = spawn(crucible_home, "--drain-timeout", "60")
    procs.append(worker)
    wait_for(lambda: log.exists(), 30, "the job to start")
    worker.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert worker.poll() is None  # draining, would wait up to 60 s
    worker.send_signal(signal.SIGINT)
    assert worker.wait(20) == 130
    assert sched.get("s").status == "queued"
    sched.close()

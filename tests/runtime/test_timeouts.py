"""A job past its timeout is retried only after its attempt has really stopped.

The bug: the worker failed (and so requeued) a timed-out job the moment the
deadline passed, while the handler was still winding down; another worker
claimed the retry at once and both ran the job (4 s of overlap were seen).
Here two real workers race on such a job; the handler records when each
attempt started and ended, and no two intervals may overlap.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crucible_core.ir.work import Constraints, Job, RetryPolicy
from crucible_core.plugins import PluginHost
from crucible_core.queue.scheduler import Scheduler
from crucible_core.queue.worker import Worker

from . import jobs

ROOT = Path(__file__).resolve().parents[2]


def timed_job(job_id: str, directory: Path, *, attempts: int, stop_s: float) -> Job:
    return Job(
        id=job_id,
        kind="custom",
        payload={
            "target": f"{jobs.__name__}:slow_to_stop",
            "args": {"directory": str(directory), "stop_s": stop_s},
        },
        constraints=Constraints(
            timeout_s=0.3,
            retry_policy=RetryPolicy(max_attempts=attempts, initial_delay_ms=0, max_delay_ms=0),
        ),
    )


def attempts_of(directory: Path) -> list[tuple[int, float, float, int]]:
    rows: list[tuple[int, float, float, int]] = []
    for line in (directory / "attempts.log").read_text().splitlines():
        n, start, end, pid = line.split()
        rows.append((int(n), float(start), float(end), int(pid)))
    return sorted(rows, key=lambda r: r[1])


def assert_no_overlap(rows: list[tuple[int, float, float, int]]) -> None:
    for before, after in itertools.pairwise(rows):
        assert after[1] >= before[2], (
            f"attempt {after[0]} started {before[2] - after[1]:.3f} s before attempt "
            f"{before[0]} ended: {rows}"
        )


@pytest.fixture
def sched(crucible_home: Path) -> Iterator[Scheduler]:
    s = Scheduler(sync="normal")
    yield s
    s.close()


def test_two_thread_workers_never_overlap_on_a_timed_out_job(
    sched: Scheduler, host: PluginHost, tmp_path: Path
) -> None:
    sched.enqueue(timed_job("t", tmp_path, attempts=3, stop_s=0.6))
    workers = [
        Worker(Scheduler(sync="normal"), lease_s=5.0, heartbeat_s=0.05, poll_s=0.01, host=host)
        for _ in range(2)
    ]
    threads = [threading.Thread(target=w.run, kwargs={"exit_when_idle": True}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for w in workers:
        w.scheduler.close()
    assert not any(t.is_alive() for t in threads)
    job = sched.get("t")
    assert job.status == "dead"
    assert job.error is not None
    assert job.error.code == "timeout"
    rows = attempts_of(tmp_path)
    assert [r[0] for r in rows] == [1, 2, 3]
    assert_no_overlap(rows)
    # Each requeue was committed only after the attempt before it had ended.
    requeues = [t.at for t in sched.history("t") if t.to_status in ("queued", "dead")][1:]
    assert len(requeues) == 3
    for at, row in zip(requeues, rows, strict=True):
        assert at >= row[2]


def test_timed_out_job_keeps_its_lease_while_the_handler_winds_down(
    sched: Scheduler, host: PluginHost, tmp_path: Path
) -> None:
    """Winding down takes longer than the lease: the heartbeat must keep it meanwhile."""
    sched.enqueue(timed_job("w", tmp_path, attempts=1, stop_s=3.0))
    w = Worker(sched, lease_s=1.0, heartbeat_s=0.1, poll_s=0.01, host=host)
    t = threading.Thread(target=w.run, kwargs={"exit_when_idle": True})
    t.start()
    time.sleep(1.8)  # past the timeout (0.3 s) and the lease (1 s)
    assert sched.get("w").status == "running"
    assert sched.claim("intruder", lease_s=5.0) is None
    t.join(20)
    job = sched.get("w")
    assert (job.status, job.error.code if job.error else None) == ("dead", "timeout")
    assert len(attempts_of(tmp_path)) == 1


def _spawn(home: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CRUCIBLE_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crucible_core.cli.main",
            "worker",
            "--poll",
            "0.02",
            "--lease",
            "3",
            "--exit-when-idle",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_two_worker_processes_never_overlap_on_a_timed_out_job(
    crucible_home: Path, tmp_path: Path
) -> None:
    sched = Scheduler()
    sched.enqueue(timed_job("p", tmp_path, attempts=3, stop_s=0.6))
    procs = [_spawn(crucible_home) for _ in range(2)]
    try:
        for p in procs:
            assert p.wait(60) == 0, p.stderr.read().decode() if p.stderr else ""
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            if p.stderr:
                p.stderr.close()
    assert sched.get("p").status == "dead"
    rows = attempts_of(tmp_path)
    assert [r[0] for r in rows] == [1, 2, 3]
    assert_no_overlap(rows)
    sched.close()


def test_stopped_worker_never_hands_over_a_job_its_handler_still_runs(
    crucible_home: Path, tmp_path: Path
) -> None:
    """SIGTERM, and the handler ignores it: the job is taken over only once that process died.

    The old drain released such a job after a short grace, so another worker
    ran it while the first handler was still running.
    """
    sched = Scheduler()
    sched.enqueue(
        Job(
            id="deaf",
            kind="custom",
            payload={"target": f"{jobs.__name__}:deaf", "args": {"directory": str(tmp_path)}},
        )
    )
    log = tmp_path / "alive.log"
    env = {
        **os.environ,
        "CRUCIBLE_HOME": str(crucible_home),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    base = [sys.executable, "-m", "crucible_core.cli.main", "worker", "--poll", "0.02"]
    first = subprocess.Popen(
        [*base, "--lease", "1.5", "--drain-timeout", "0.2"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    second: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and log.read_text().count("\n") > 3):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.02)
        # A second worker is already polling when the first one is told to stop.
        second = subprocess.Popen(
            [*base, "--lease", "5", "--exit-when-idle"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
        gone = time.time()
        assert second.wait(60) == 0
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
    lines = [line.split() for line in log.read_text().splitlines()]
    first_attempt = [float(t) for pid, t in lines if int(pid) == first.pid]
    retry = [float(t) for pid, t in lines if int(pid) == second.pid]
    assert first_attempt
    assert retry, "the second worker never ran the job"
    assert min(retry) > max(first_attempt)
    assert min(retry) >= gone  # only after the first worker's process was gone
    job = sched.get("deaf")
    assert (job.status, job.result) == ("succeeded", "run again elsewhere")
    assert job.error is None
    sched.close()

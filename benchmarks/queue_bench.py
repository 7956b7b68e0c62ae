"""Durable queue throughput: enqueue -> claim -> complete cycles per second, vs huey.

Target (issue 4): >= 1.0x huey's SqliteHuey and >= 1,500 cycles/s, durability on.
Both queues live on the same disk (a temporary directory, or --dir), with
every commit fsynced: crucible's default (PRAGMA synchronous=FULL) and
SqliteHuey(fsync=True). A cycle is one job submitted (committed), claimed and
finished with its result stored (committed) -- the same work for both:

- crucible, as a worker runs it: enqueue(); complete_and_claim() (the finish
  of one job and the claim of the next share one transaction);
- crucible, three separate calls: enqueue(); claim(); complete();
- huey: task() (enqueue); dequeue(); execute() (stores the result).

Two shapes: one thread doing everything ("serial"; the queues take turns in
batches of 100 cycles so that a disk slowed by other work on the machine
slows them alike), and a producer process beside a consumer process
("2 processes", how a queue is used; whole runs, alternating order). Rates
are total cycles over total time; brackets give the slowest and fastest
batch or run. The disk's raw fdatasync rate is printed before and after:
no design can beat half of it with two durable commits per cycle.
Run: .venv/bin/python -m benchmarks.queue_bench [--n 3000] [--rounds 6] [--dir DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crucible_core.ir.work import Job
from crucible_core.queue.scheduler import Scheduler


def _fresh(directory: Path, name: str) -> Path:
    path = directory / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# -- serial: one thread does everything in turn, in interleaved batches ------


class CrucibleFused:
    """The worker's path: enqueue(); complete_and_claim() -- 2 commits per cycle."""

    def __init__(self, directory: Path) -> None:
        self.s = Scheduler(_fresh(directory, "crucible-fused") / "crucible.db", sync="full")
        self.s.enqueue(Job(kind="custom", payload={"i": -1}))
        current = self.s.claim("bench")
        assert current is not None
        self.current = current
        self.i = 0

    def batch(self, k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            self.i += 1
            self.s.enqueue(Job(kind="custom", payload={"i": self.i}))
            nxt = self.s.complete_and_claim(self.current.id, self.i, worker_id="bench")
            assert nxt is not None
            self.current = nxt
        return time.perf_counter() - start

    def close(self) -> None:
        self.s.close()


class CrucibleCalls:
    """Three separate calls: enqueue(); claim(); complete() -- 3 commits per cycle."""

    def __init__(self, directory: Path) -> None:
        self.s = Scheduler(_fresh(directory, "crucible-calls") / "crucible.db", sync="full")
        self.i = 0

    def batch(self, k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            self.i += 1
            self.s.enqueue(Job(kind="custom", payload={"i": self.i}))
            job = self.s.claim("bench")
            assert job is not None
            self.s.complete(job.id, self.i, worker_id="bench")
        return time.perf_counter() - start

    def close(self) -> None:
        self.s.close()


class HueySerial:
    """task() enqueues; dequeue() and execute() (which stores the result) -- 3 commits."""

    def __init__(self, directory: Path) -> None:
        self.huey, self.work = _huey(_fresh(directory, "huey-serial"))
        self.i = 0

    def batch(self, k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            self.i += 1
            self.work(self.i)
            self.huey.execute(self.huey.dequeue())
        return time.perf_counter() - start

    def close(self) -> None:
        assert self.huey.storage.result_store_size() == self.i
        self.huey.storage.close()


# -- 2 processes: a producer process enqueues while this one consumes --------


def _crucible_producer(db: str, n: int, go: Any) -> None:
    s = Scheduler(db, sync="full")
    go.wait()
    for i in range(n):
        s.enqueue(Job(kind="custom", payload={"i": i}))
    s.close()


def crucible_two_processes(directory: Path, n: int) -> float:
    db = str(_fresh(directory, "crucible-2p") / "crucible.db")
    s = Scheduler(db, sync="full")
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    producer = ctx.Process(target=_crucible_producer, args=(db, n, go))
    producer.start()
    time.sleep(0.5)  # let the producer start up before the clock runs
    done = 0
    go.set()
    start = time.perf_counter()
    job = None
    while done < n:
        if job is None:
            job = s.claim("bench")
            if job is None:
                continue
        job = s.complete_and_claim(job.id, done, worker_id="bench")
        done += 1
    elapsed = time.perf_counter() - start
    producer.join()
    s.close()
    return elapsed


# -- huey ---------------------------------------------------------------------


def _huey(path: Path) -> tuple[Any, Callable[..., Any]]:
    from huey import SqliteHuey

    huey = SqliteHuey("bench", filename=str(path / "huey.db"), fsync=True)

    def work(i: int) -> int:
        return i

    # huey names a task after its module; make it the same in the spawned producer.
    work.__module__ = "crucible_queue_bench"
    return huey, huey.task()(work)


def _retrying(fn: Callable[[], Any]) -> Any:
    # Under contention SqliteHuey's BEGIN EXCLUSIVE can fail with "database is locked"
    # at once; its consumer retries, and so do we.
    import sqlite3

    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise


def _huey_producer(path: str, n: int, go: Any) -> None:
    _, work = _huey(Path(path))
    go.wait()
    for i in range(n):
        _retrying(lambda i=i: work(i))


def huey_two_processes(directory: Path, n: int) -> float:
    path = _fresh(directory, "huey-2p")
    huey, _ = _huey(path)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    producer = ctx.Process(target=_huey_producer, args=(str(path), n, go))
    producer.start()
    time.sleep(0.5)
    done = 0
    go.set()
    start = time.perf_counter()
    while done < n:
        task = _retrying(huey.dequeue)
        if task is None:
            continue
        _retrying(lambda task=task: huey.execute(task))
        done += 1
    elapsed = time.perf_counter() - start
    producer.join()
    huey.storage.close()
    return elapsed


def fsync_rate(directory: Path, n: int = 300) -> float:
    """Raw fdatasync calls per second on this disk (4 KiB writes): the durability ceiling."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            os.fdatasync(fd)
        return n / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="cycles per queue and shape")
    parser.add_argument("--batch", type=int, default=100, help="serial: cycles per turn")
    parser.add_argument("--rounds", type=int, default=6, help="2 processes: runs per queue")
    parser.add_argument("--dir", type=Path, help="where the databases go (default: a temp dir)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="crucible-queue-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"fsync on every commit, databases in {base}, {os.cpu_count()} cpus")
    probe = fsync_rate(base)
    print(
        f"disk: {probe:.0f} fdatasync/s before the run, so at most {probe / 2:.0f} cycles/s "
        f"for 2 durable commits a cycle (crucible's worker path), {probe / 3:.0f} for 3 (huey)"
    )

    # Serial: the queues take turns in batches, so a disk that speeds up or
    # slows down (other work on the machine) affects them alike.
    serial: dict[str, Any] = {
        "crucible (worker path)": CrucibleFused(base),
        "crucible (3 calls)": CrucibleCalls(base),
        "huey SqliteHuey": HueySerial(base),
    }
    spent = dict.fromkeys(serial, 0.0)
    batches: dict[str, list[float]] = {name: [] for name in serial}
    for _ in range(max(1, args.n // args.batch)):
        for name, queue in serial.items():
            t = queue.batch(args.batch)
            spent[name] += t
            batches[name].append(args.batch / t)
    for queue in serial.values():
        queue.close()
    done = max(1, args.n // args.batch) * args.batch
    rates = {name: done / t for name, t in spent.items()}
    print(f"\nserial, {done} cycles each in turns of {args.batch} (cycles/s):")
    _report(rates, batches)

    # Two processes: whole runs, alternating which queue goes first.
    per_run = max(1, args.n // args.rounds)
    two: dict[str, Callable[[Path, int], float]] = {
        "crucible (worker path)": crucible_two_processes,
        "huey SqliteHuey": huey_two_processes,
    }
    spent2 = dict.fromkeys(two, 0.0)
    runs: dict[str, list[float]] = {name: [] for name in two}
    for r in range(args.rounds):
        order = list(two) if r % 2 == 0 else list(reversed(two))
        for name in order:
            t = two[name](base, per_run)
            spent2[name] += t
            runs[name].append(per_run / t)
    rates2 = {name: per_run * args.rounds / t for name, t in spent2.items()}
    print(f"\n2 processes, {args.rounds} runs of {per_run} cycles each (cycles/s):")
    _report(rates2, runs)

    probe_after = fsync_rate(base)
    print(f"\ndisk: {probe_after:.0f} fdatasync/s after the run")
    for shape, table in (("serial", rates), ("2 processes", rates2)):
        rate = table["crucible (worker path)"]
        ratio = rate / table["huey SqliteHuey"]
        met = ratio >= 1.0 and rate >= 1500
        print(
            f"target ({shape}) >= 1.0x huey and >= 1500/s: {'met' if met else 'NOT met'} "
            f"({rate:.0f}/s, {ratio:.2f}x huey)"
        )
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)


def _report(rates: dict[str, float], samples: dict[str, list[float]]) -> None:
    huey = rates["huey SqliteHuey"]
    for name, rate in rates.items():
        lo, hi = min(samples[name]), max(samples[name])
        print(f"  {name:<24} {rate:8.0f}   [{lo:6.0f} .. {hi:<6.0f}]   {rate / huey:5.2f}x huey")


if __name__ == "__main__":
    main()

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

Two shapes: one thread doing everything in turn ("serial"), and a producer
process beside a consumer process ("2 processes", how a queue is used).
Rounds alternate between the queues; the median of the rounds is reported.
Run: .venv/bin/python benchmarks/queue_bench.py [--n 2000] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crucible_core.ir.work import Job
from crucible_core.runtime.scheduler import Scheduler


def _fresh(directory: Path, name: str) -> Path:
    path = directory / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# -- crucible -----------------------------------------------------------------


def crucible_fused(directory: Path, n: int) -> float:
    s = Scheduler(_fresh(directory, "crucible-fused") / "crucible.db", sync="full")
    job = Job(kind="custom", payload={"i": 0})
    s.enqueue(job)
    current = s.claim("bench")
    assert current is not None
    start = time.perf_counter()
    for i in range(n):
        s.enqueue(Job(kind="custom", payload={"i": i}))
        current = s.complete_and_claim(current.id, i, worker_id="bench")
        assert current is not None
    elapsed = time.perf_counter() - start
    s.close()
    return n / elapsed


def crucible_calls(directory: Path, n: int) -> float:
    s = Scheduler(_fresh(directory, "crucible-calls") / "crucible.db", sync="full")
    start = time.perf_counter()
    for i in range(n):
        s.enqueue(Job(kind="custom", payload={"i": i}))
        job = s.claim("bench")
        assert job is not None
        s.complete(job.id, i, worker_id="bench")
    elapsed = time.perf_counter() - start
    s.close()
    return n / elapsed


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
    return n / elapsed


# -- huey ---------------------------------------------------------------------


def _huey(path: Path) -> tuple[Any, Callable[..., Any]]:
    from huey import SqliteHuey

    huey = SqliteHuey("bench", filename=str(path / "huey.db"), fsync=True)

    def work(i: int) -> int:
        return i

    # huey names a task after its module; make it the same in the spawned producer.
    work.__module__ = "crucible_queue_bench"
    return huey, huey.task()(work)


def huey_serial(directory: Path, n: int) -> float:
    huey, work = _huey(_fresh(directory, "huey-serial"))
    start = time.perf_counter()
    for i in range(n):
        work(i)
        huey.execute(huey.dequeue())
    elapsed = time.perf_counter() - start
    assert huey.storage.result_store_size() == n
    huey.storage.close()
    return n / elapsed


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
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="cycles per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where the databases go (default: a temp dir)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="crucible-queue-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    shapes: dict[str, dict[str, Callable[[Path, int], float]]] = {
        "serial": {
            "crucible (worker path)": crucible_fused,
            "crucible (3 calls)": crucible_calls,
            "huey SqliteHuey": huey_serial,
        },
        "2 processes": {
            "crucible (worker path)": crucible_two_processes,
            "huey SqliteHuey": huey_two_processes,
        },
    }
    print(f"{args.n} cycles x {args.rounds} rounds, fsync on every commit, in {base}")
    print(f"(cpus: {os.cpu_count()}; median of rounds; cycles per second)")
    results: dict[str, dict[str, float]] = {}
    for shape, runners in shapes.items():
        samples: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, fn in runners.items():
                samples[name].append(fn(base, args.n))
        results[shape] = {name: statistics.median(v) for name, v in samples.items()}
        print(f"\n{shape}:")
        huey = results[shape]["huey SqliteHuey"]
        for name, rate in results[shape].items():
            spread = f"{min(samples[name]):7.0f}..{max(samples[name]):<7.0f}"
            print(f"  {name:<24} {rate:8.0f} /s  [{spread}]  {rate / huey:5.2f}x huey")
    print()
    for shape in shapes:
        rate = results[shape]["crucible (worker path)"]
        ratio = rate / results[shape]["huey SqliteHuey"]
        met = ratio >= 1.0 and rate >= 1500
        print(
            f"target ({shape}) >= 1.0x huey and >= 1500/s: {'met' if met else 'NOT met'} "
            f"({rate:.0f}/s, {ratio:.2f}x)"
        )
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

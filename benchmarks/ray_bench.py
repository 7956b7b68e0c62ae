"""The ray executor vs core's thread and process executors on this machine (issue 22).

Three figures, all measured in the same run on a local Ray instance capped
at ``--cpus`` CPUs (2 on the CI kind of machine), each pool with as many
workers:

1. **Throughput of tiny jobs.** ``--jobs`` (500) calls of a function that
   returns at once: submitted together, timed until the last result is
   back; through ``submit`` of each executor, and through the durable
   queue (``Worker``: claim, run, record in SQLite) in the worker's own
   threads vs ``Worker(executor=RayExecutor)``.
2. **Start-up.** Building the executor plus its first result (Ray: start a
   local instance, ``ray.init(num_cpus=...)``; process: spawn a pool).
3. **Crossover.** ``--batch`` CPU-bound jobs (a busy loop of L ms) per
   executor, warm, for growing L: the thread pool holds the GIL (one core),
   the process pool and Ray use every core but pay a per-job overhead. The
   crossover is the smallest L at which Ray's wall time is no worse than the
   thread pool's (warm), and, counting Ray's start-up once per batch, the L
   at which it pays for its own start.
Run: .venv/bin/python -m benchmarks.ray_bench [--jobs 500] [--cpus 2] [--batch 20]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from crucible_core.ir.work import Job
from crucible_core.pipeline.executors import ProcessExecutor, ThreadExecutor
from crucible_core.queue.scheduler import Scheduler
from crucible_core.queue.worker import Worker

LENGTHS_MS = (0.1, 1.0, 5.0, 20.0, 50.0, 100.0, 200.0)


def tiny(i: int) -> int:
    return i


def spin(ms: float) -> float:
    """Burn ``ms`` of this thread's CPU time (not wall time: threads share the GIL)."""
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass
    return ms


def tiny_job(ctx: Any, i: int) -> int:
    return i


def _through(executor: Any, fn: Callable[..., Any], args: list[Any], repeat: int = 3) -> float:
    """Best of ``repeat`` wall seconds to submit every call and collect every result."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        futures = [executor.submit(fn, a) for a in args]
        cf.wait(futures)
        for f in futures:
            f.result()
        best = min(best, time.perf_counter() - start)
    return best


def _startup(build: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    executor = build()
    executor.submit(tiny, 0).result()
    return executor, time.perf_counter() - start


def _queue_run(jobs: int, cpus: int, executor: Any | None) -> float:
    with tempfile.TemporaryDirectory() as home:
        os.environ["CRUCIBLE_HOME"] = home
        sched = Scheduler(sync="normal")
        sched.enqueue_many(
            [
                Job(
                    id=f"t{i}",
                    kind="custom",
                    payload={"target": "benchmarks.ray_bench:tiny_job", "args": {"i": i}},
                )
                for i in range(jobs)
            ]
        )
        worker = Worker(sched, concurrency=cpus, poll_s=0.01, executor=executor)
        start = time.perf_counter()
        stats = worker.run(exit_when_idle=True)
        took = time.perf_counter() - start
        sched.close()
        assert stats.succeeded == jobs, stats
        return took


def main() -> None:
    parser = argparse.ArgumentParser(description="the ray executor vs thread and process")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    # Ray workers import this module by name: they need the repository on their path.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p
    )
    from crucible_ray import RayExecutor

    builders: dict[str, Callable[[], Any]] = {
        "thread": lambda: ThreadExecutor(max_workers=args.cpus),
        "process": lambda: ProcessExecutor(max_workers=args.cpus),
        "ray": lambda: RayExecutor("local", num_cpus=args.cpus),
    }
    executors: dict[str, Any] = {}
    startup: dict[str, float] = {}
    print(f"## start-up (build + first result), {args.cpus} CPUs")
    for name, build in builders.items():
        executors[name], took = _startup(build)
        startup[name] = took
        print(f"{name:8s} {took * 1000:9.1f} ms")
    print(f"\n## {args.jobs} tiny jobs through submit() (warm)")
    rates: dict[str, float] = {}
    for name, ex in executors.items():
        took = _through(ex, tiny, list(range(args.jobs)))
        rates[name] = args.jobs / took
        print(f"{name:8s} {took:7.2f} s  {rates[name]:9.0f} jobs/s")
    print(f"\n## {args.jobs} tiny jobs through the durable queue (Worker, concurrency {args.cpus})")
    own = _queue_run(args.jobs, args.cpus, None)
    on_ray = _queue_run(args.jobs, args.cpus, executors["ray"])
    print(f"worker threads {own:7.2f} s  {args.jobs / own:7.0f} jobs/s")
    print(f"worker on ray  {on_ray:7.2f} s  {args.jobs / on_ray:7.0f} jobs/s")
    print(f"\n## crossover: {args.batch} CPU-bound jobs of L ms, warm (wall s)")
    print(f"{'L ms':>8s} {'thread':>8s} {'process':>8s} {'ray':>8s}  ray/thread")
    ratios: list[tuple[float, float]] = []
    for ms in LENGTHS_MS:
        walls = {n: _through(ex, spin, [ms] * args.batch) for n, ex in executors.items()}
        print(
            f"{ms:8.1f} {walls['thread']:8.3f} {walls['process']:8.3f} {walls['ray']:8.3f}"
            f"  {walls['ray'] / walls['thread']:6.2f}"
        )
        ratios.append((ms, walls["ray"] / walls["thread"]))
    stays = [ms for i, (ms, _) in enumerate(ratios) if all(r <= 1.0 for _, r in ratios[i:])]
    print(f"measured crossover (Ray no slower from this L on): {stays[0] if stays else None} ms")
    # Model: c free cores, Ray's per-job overhead o (pipelined), start-up S once per
    # `jobs` jobs: threads take N*L, Ray N*L/c + N*o (+ S). Ray wins from
    # L = o*c/(c-1) warm, and from L = (S/jobs + o)*c/(c-1) counting its start.
    c, o = args.cpus, 1.0 / rates["ray"]
    if c > 1:
        print(f"model with {c} free cores, o = {o * 1000:.2f} ms per job:")
        print(f"  warm: L >= {o * c / (c - 1) * 1000:.1f} ms")
        paid = (startup["ray"] / args.jobs + o) * c / (c - 1)
        print(f"  counting start-up once per {args.jobs} jobs: L >= {paid * 1000:.1f} ms")
    for ex in executors.values():
        ex.shutdown()


if __name__ == "__main__":
    main()

"""Pipeline runner + event bus overhead around a no-op stage.

Target (issue 4): <= 1 ms per stage. Each pipeline run does everything a real
one does: resolves and builds its stages through the plugin host, emits
stage.start / stage.end to the event bus (telemetry.jsonl, flushed per event,
plus one subscriber), stores the manifest (atomic, fsynced) and records a
lineage trace in SQLite. The per-stage cost is the slope between a 1-stage
and an (N+1)-stage pipeline, so the fixed per-run cost (manifest, lineage,
fsyncs) is reported apart. Baseline in the same run: calling the no-op
stage's run() N times directly.
Run: .venv/bin/python -m benchmarks.runner_bench [--stages 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crucible_core.hookspecs import hookimpl
from crucible_core.ir.experiment import Experiment, StageDef
from crucible_core.ir.work import Job
from crucible_core.pipeline.executors import InlineExecutor, ThreadExecutor
from crucible_core.pipeline.runner import run_pipeline
from crucible_core.plugins import PluginHost
from crucible_core.records.events import Event, EventBus
from crucible_core.records.lineage import LineageRecorder


class Noop:
    def run(self, ctx: Any) -> None:
        return None


class NoopPlugin:
    @hookimpl
    def register_stages(self, register: Any) -> None:
        register("noop", Noop)


def chain(n: int) -> Experiment:
    return Experiment(
        id=f"chain{n}",
        stages=[
            StageDef(name=f"s{i}", uses="noop", depends_on=[f"s{i - 1}"] if i else [])
            for i in range(n)
        ],
    )


def wide(n: int) -> Experiment:
    return Experiment(id=f"wide{n}", stages=[StageDef(name=f"s{i}", uses="noop") for i in range(n)])


def timed_run(
    experiment: Experiment,
    host: PluginHost,
    lineage: LineageRecorder,
    executor: Callable[[], Any] | None,
    counter: list[int],
) -> float:
    counter[0] += 1
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append, maxsize=100_000)
    start = time.perf_counter()
    run_pipeline(
        experiment,
        Job(id=f"bench-{counter[0]}"),
        host=host,
        bus=bus,
        lineage=lineage,
        executor=executor() if executor else None,
    )
    elapsed = time.perf_counter() - start
    bus.close()
    assert len([e for e in seen if e.kind.startswith("stage.")]) == 2 * len(experiment.stages)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="crucible-runner-bench-"))
    os.environ["CRUCIBLE_HOME"] = str(home)
    host = PluginHost(autoload=False)
    host.add_plugin(NoopPlugin(), name="bench")
    lineage = LineageRecorder()
    counter = [0]
    n = args.stages
    cases: dict[str, tuple[Callable[[int], Experiment], Callable[[], Any] | None]] = {
        "chain, default executor": (chain, None),
        "chain, inline executor": (chain, InlineExecutor),
        "wide, 4 threads": (wide, lambda: ThreadExecutor(max_workers=4)),
    }
    print(f"{n} no-op stages vs 1, {args.rounds} rounds (median), CRUCIBLE_HOME={home}")
    worst = 0.0
    for label, (shape, executor) in cases.items():
        small = [timed_run(shape(1), host, lineage, executor, counter) for _ in range(args.rounds)]
        big = [
            timed_run(shape(n + 1), host, lineage, executor, counter) for _ in range(args.rounds)
        ]
        fixed = statistics.median(small)
        per_stage = (statistics.median(big) - fixed) / n
        worst = max(worst, per_stage)
        print(
            f"  {label:<26} {per_stage * 1e3:7.3f} ms per stage   fixed {fixed * 1e3:6.2f} ms/run"
        )
    noop = Noop()
    start = time.perf_counter()
    for _ in range(n):
        noop.run(None)
    direct = (time.perf_counter() - start) / n
    print(f"  {'direct stage.run() calls':<26} {direct * 1e3:7.4f} ms per stage")
    verdict = "met" if worst <= 1e-3 else "NOT met"
    print(f"target <= 1 ms per stage: {verdict} (worst {worst * 1e3:.3f} ms)")
    lineage.close()
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

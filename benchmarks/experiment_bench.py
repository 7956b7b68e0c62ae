"""Experiment scheduling overhead per cell vs the cell's own run time (issue 16).

The same 4 cells (2 learning rates x 2 seeds of examples/dates-local.toml cut
to ``--steps`` steps, no evaluation) are run two ways, in this process, one
cell at a time:

- direct: ``crucible_core.train.run.run_training`` on each cell's TrainingJob,
  one after the other (what a hand-written sweep loop would do);
- experiment: ``crucible_harness.experiment.run(..., workers=1)``: decode and
  expand the grid, submit the cells to the durable queue (SQLite), claim each
  in a worker slot, run it through the cell handler, record its outcome, and
  poll the statuses until all have finished.

Two views of the overhead per cell: inside each experiment run, (wall time -
the sum of the cells' own run times, each claim-to-finish as the queue
recorded it) / cells, which is free of run-to-run noise; and (best experiment
round - best direct round) / cells. Rounds alternate the order so that load
drift on a shared machine hits both alike. The interop sinks (mlflow, otel,
openlineage) are disabled: they cost both sides alike and are not scheduling.
Run: .venv/bin/python -m benchmarks.experiment_bench [--steps 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _files(tmp: Path, steps: int, exp_id: str) -> Path:
    text = (
        (ROOT / "examples" / "dates-local.toml")
        .read_text()
        .replace("max_steps = 200", f"max_steps = {steps}")
        .replace("save_every = 100", f"save_every = {steps}")
        .replace("every_n_steps = 100", f"every_n_steps = {steps}")
        .replace('"examples/data/dates.jsonl"', json.dumps(str(ROOT / "examples/data/dates.jsonl")))
        .replace('metrics = ["loss", "exact_match"]', 'metrics = ["loss"]')
    )
    (tmp / "base.toml").write_text(text)
    path = tmp / f"{exp_id}.toml"
    path.write_text(
        f'id = "{exp_id}"\njob = "base.toml"\nseeds = [0, 1]\n'
        '[parameter_grid]\n"learning_config.optimizer.lr" = [1e-3, 5e-3]\n'
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        os.environ["CRUCIBLE_HOME"] = str(tmp / "home")
        os.environ["CRUCIBLE_DISABLE_PLUGINS"] = "mlflow,otel,openlineage"
        from crucible_harness.experiment import load, run

        from crucible_core.queue.scheduler import Scheduler
        from crucible_core.train.run import run_training

        def direct(r: int) -> float:
            loaded = load(_files(tmp, args.steps, f"direct{r}"))
            start = time.perf_counter()
            for cell in loaded.cells:
                run_training(cell.job, job_id=f"d{r}-{cell.cell_id}")
            return time.perf_counter() - start

        inside: list[float] = []

        def experiment(r: int) -> float:
            start = time.perf_counter()
            loaded = load(_files(tmp, args.steps, f"grid{r}"))
            sched = Scheduler()
            try:
                outcome = run(loaded, sched, workers=1)
                wall = time.perf_counter() - start
                own = 0.0
                for c in loaded.cells:
                    job = sched.get(c.cell_id)
                    assert job.started_at is not None
                    assert job.finished_at is not None
                    own += (job.finished_at - job.started_at).total_seconds()
            finally:
                sched.close()
            assert {s.status for s in outcome.statuses} == {"succeeded"}, outcome.statuses
            inside.append((wall - own) / len(loaded.cells))
            return wall

        direct(99)  # warm-up: imports, the model built once, caches
        d_times: list[float] = []
        e_times: list[float] = []
        for r in range(args.rounds):
            if r % 2:
                e_times.append(experiment(r))
                d_times.append(direct(r))
            else:
                d_times.append(direct(r))
                e_times.append(experiment(r))
            print(f"round {r}: direct {d_times[-1]:.2f} s, experiment {e_times[-1]:.2f} s")
        cells = 4
        d, e = min(d_times), min(e_times)
        per_cell = d / cells
        overhead = (e - d) / cells
        print(f"cells: {cells} x {args.steps} steps, one at a time")
        print(f"direct run_training loop: {d:.2f} s ({per_cell:.2f} s per cell)")
        print(f"crucible experiment run --workers 1: {e:.2f} s")
        print(f"overhead per cell vs the direct loop: {overhead * 1000:.0f} ms "
              f"({overhead / per_cell:.1%} of a cell)")  # fmt: skip
        import statistics

        mid = statistics.median(inside)
        print(f"overhead per cell inside a run (wall - cells' own time), median of "
              f"{len(inside)}: {mid * 1000:.0f} ms ({mid / per_cell:.1%} of a cell)")  # fmt: skip


if __name__ == "__main__":
    main()

"""The runner API: an experiment driven from Python, stage by stage (for embedders).

The four calls of the runner the project grew from, on this project's
experiments::

    from crucible_harness.runner import Runner

    runner = Runner.init("grid.toml", workers=2)   # load + validate (ConfigError: exit-2 mistakes)
    runner.run_stage("train")                       # every cell: training run (+ its evaluation)
    runner.run_stage("eval", {"dataset": "sample:gsm8k", "metrics": ["exact_match"]})
    runner.run_stage("report", {"out": "reports/"})
    results = runner.get_results()                  # per cell: status, metrics; missed targets
    runner.cleanup()                                # stop the worker, close the queue

``Runner`` is also a context manager (``cleanup`` on exit). Everything goes
through the same code as ``crucible experiment``: the cells are jobs in the
durable queue (``$CRUCIBLE_HOME``), so ``crucible worker`` processes may run
them too, and a program that dies and calls ``init`` + ``run_stage("train")``
again runs only the cells that had not finished.

**Stages.**

- ``train``: submit the cells the queue lacks and wait until every cell has
  finished, running ``workers`` of them at a time in this process (0: leave
  them to ``crucible worker`` processes), through ``executor`` when given
  (e.g. ``crucible_ray.RayExecutor``). The experiment's ``budget`` applies.
  Options: ``workers``, ``lease_s``.
- ``eval``: score every succeeded cell that has no evaluation on that
  dataset yet (:func:`crucible_harness.evaluate.evaluate`). Options: the
  fields of :class:`~crucible_core.ir.CellEval` (``dataset``, ``metrics``,
  ``n``, ``preset``, ``extract``); default the experiment's ``evaluation``.
- ``report``: write the three reports (:mod:`crucible_harness.expreport`).
  Option ``out`` (default ``$CRUCIBLE_HOME/experiments/<id>``).

**Telemetry.** ``runner.bus`` (an in-memory
:class:`~crucible_core.records.events.EventBus`) carries
``experiment.stage`` events (``stage``, ``state``: ``start``, ``end`` or
``error``, with ``seconds`` and the error's ``code``) and every event of the
cells this process runs (``train.step``, ``eval.metric``...); subscribe with
``runner.bus.subscribe(callback)``. The cells' telemetry also goes to their
runs' ``telemetry.jsonl`` as always.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from crucible_core.errors import ConfigError, CrucibleError
from crucible_core.records.events import EventBus
from crucible_harness.experiment import LoadedExperiment, Miss, RunOutcome

__all__ = ["STAGES", "CellResult", "Results", "Runner"]

#: The stages :meth:`Runner.run_stage` knows.
STAGES = ("train", "eval", "report")


@dataclass(frozen=True)
class CellResult:
    """One cell as it stands: its overrides, seed, queue status and metrics
    (the run's ``training`` summary and ``eval.<metric>`` scores)."""

    cell_id: str
    overrides: dict[str, Any]
    seed: int
    repeat: int
    status: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Results:
    """What :meth:`Runner.get_results` returns."""

    experiment: str
    cells: list[CellResult]
    missed: list[Miss]
    reports: dict[str, Path] = field(default_factory=dict[str, Path])

    @property
    def finished(self) -> bool:
        """Whether every cell has reached a final state."""
        from crucible_harness.experiment import FINAL

        return all(c.status in FINAL for c in self.cells)


class Runner:
    """An experiment run from Python (module docstring). Build it with :meth:`init`."""

    def __init__(
        self,
        loaded: LoadedExperiment,
        *,
        workers: int = 1,
        executor: Any = None,
        scheduler: Any = None,
    ) -> None:
        from crucible_core._options import check_count
        from crucible_core.queue.scheduler import Scheduler

        self.loaded = loaded
        self.workers = check_count("workers", workers, minimum=0)
        self.executor = executor
        self._own_scheduler = scheduler is None
        self.scheduler = Scheduler() if scheduler is None else scheduler
        self.bus = EventBus(sink=False)
        self.outcome: RunOutcome | None = None
        self.reports: dict[str, Path] = {}
        self._closed = False

    @classmethod
    def init(
        cls,
        experiment: str | Path,
        *,
        workers: int = 1,
        executor: Any = None,
        scheduler: Any = None,
    ) -> Runner:
        """Load and check the experiment file ``experiment`` (mistakes are ConfigErrors
        naming the file and field); nothing runs yet."""
        from crucible_harness.experiment import load

        return cls(load(Path(experiment)), workers=workers, executor=executor, scheduler=scheduler)

    @property
    def experiment_id(self) -> str:
        return self.loaded.experiment.id

    def _emit(self, stage: str, state: str, **data: Any) -> None:
        self.bus.emit("experiment.stage", job_id=self.experiment_id, stage=stage, state=state,
                      **data)  # fmt: skip

    def run_stage(self, stage: str, options: Mapping[str, Any] | None = None) -> Any:
        """Run one stage (module docstring) and return what it produced: the
        :class:`~crucible_harness.experiment.RunOutcome` of ``train``, the eval ids by cell
        of ``eval``, the report paths of ``report``."""
        if self._closed:
            raise ConfigError("this runner was cleaned up", hint="call Runner.init again")
        if stage not in STAGES:
            close = difflib.get_close_matches(stage, STAGES, n=1)
            raise ConfigError(
                f"run_stage: no stage {stage!r}",
                hint=(f"did you mean {close[0]!r}? " if close else "")
                + "stages: "
                + ", ".join(STAGES),
            )
        opts = dict(options or {})
        started = time.perf_counter()
        self._emit(stage, "start", options={k: str(v) for k, v in opts.items()})
        try:
            result = getattr(self, f"_{stage}")(opts)
        except Exception as exc:
            code = exc.code if isinstance(exc, CrucibleError) else type(exc).__name__
            self._emit(stage, "error", seconds=round(time.perf_counter() - started, 3), code=code)
            raise
        self._emit(stage, "end", seconds=round(time.perf_counter() - started, 3))
        return result

    def _unknown(self, stage: str, opts: Mapping[str, Any], known: set[str]) -> None:
        extra = sorted(set(opts) - known)
        if extra:
            raise ConfigError(
                f"run_stage({stage!r}): unknown option(s) {', '.join(extra)}",
                hint="options: " + ", ".join(sorted(known)),
            )

    def _train(self, opts: dict[str, Any]) -> RunOutcome:
        from crucible_harness.experiment import run

        self._unknown("train", opts, {"workers", "lease_s"})
        self.outcome = run(
            self.loaded,
            self.scheduler,
            workers=int(opts.get("workers", self.workers)),
            executor=self.executor,
            wait=True,
            lease_s=float(opts.get("lease_s", 30.0)),
            on_event=self.bus.publish,
        )
        return self.outcome

    def _eval(self, opts: dict[str, Any]) -> dict[str, str]:
        from crucible_core.ir.codec import convert, to_builtins
        from crucible_core.ir.experiment import CellEval
        from crucible_core.records import paths
        from crucible_harness.evaluate import evaluate, resolve_target
        from crucible_harness.experiment import cell_eval, cell_status

        if opts:
            spec = convert(opts, CellEval)
        elif self.loaded.evaluation is not None:
            spec = self.loaded.evaluation
        else:
            raise ConfigError(
                f"{self.loaded.path}: run_stage('eval') needs a dataset and metrics",
                hint="pass {'dataset': ..., 'metrics': [...]} or add [evaluation] to the file",
            )
        done: dict[str, str] = {}
        for s in cell_status(self.loaded, self.scheduler):
            if s.status != "succeeded":
                continue
            run_dir = paths.run_dir(s.cell.cell_id)
            found = cell_eval(run_dir, spec)
            if found is None or {m.name for m in found.metrics} < set(spec.metrics):
                found = evaluate(
                    resolve_target(run_dir.as_posix()),
                    spec.dataset,
                    list(spec.metrics),
                    n=spec.n,
                    preset=spec.preset,
                    extract=spec.extract,
                )
                self.bus.emit("eval.metric", job_id=s.cell.cell_id, eval_id=found.eval_id,
                              evaluation=to_builtins(spec),
                              metrics={m.name: m.score for m in found.metrics})  # fmt: skip
            done[s.cell.cell_id] = found.eval_id
        return done

    def _report(self, opts: dict[str, Any]) -> dict[str, Path]:
        from crucible_core.records import paths
        from crucible_harness.expreport import write_reports

        self._unknown("report", opts, {"out"})
        out = Path(opts.get("out") or paths.crucible_home() / "experiments" / self.experiment_id)
        self.reports = write_reports(self.loaded, out, self.scheduler)
        return self.reports

    def get_results(self) -> Results:
        """Every cell's status and metrics, and the missed quality targets (checked
        once every cell has finished; empty before)."""
        from crucible_core.records import paths
        from crucible_harness.experiment import FINAL, missed_targets, run_metrics
        from crucible_harness.experiment import statuses as cell_statuses

        statuses = cell_statuses(self.loaded, self.scheduler)
        cells = [
            CellResult(
                cell_id=s.cell.cell_id,
                overrides=dict(s.cell.overrides),
                seed=s.cell.seed,
                repeat=s.cell.repeat,
                status=s.status,
                metrics=run_metrics(paths.run_dir(s.cell.cell_id), self.loaded.evaluation)
                if s.status == "succeeded"
                else {},
            )
            for s in statuses
        ]
        finished = all(s.status in FINAL for s in statuses)
        missed = missed_targets(self.loaded, statuses) if finished else []
        return Results(self.experiment_id, cells, missed, dict(self.reports))

    def cleanup(self) -> None:
        """Close the queue (if this runner opened it), the executor and the bus. Cells
        still in the queue stay there (a later runner or ``crucible worker`` runs them)."""
        if self._closed:
            return
        self._closed = True
        if self.executor is not None:
            self.executor.shutdown(wait=False)
        if self._own_scheduler:
            self.scheduler.close()
        self.bus.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

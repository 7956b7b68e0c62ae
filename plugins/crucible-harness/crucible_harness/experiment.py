"""Experiments over a grid of training runs, scheduled through the durable queue.

An experiment file is an :class:`~crucible_core.ir.Experiment` (TOML/JSON/YAML)
whose ``parameter_grid``, ``seeds`` and ``repeats`` describe the cells and
whose ``metadata.job`` names the base :class:`~crucible_core.ir.TrainingJob`
file (relative to the experiment file)::

    id = "dates-grid"
    seeds = [0, 1]
    metadata = { job = "dates-local.toml" }

    [parameter_grid]
    "learning_config.optimizer.lr" = [1e-3, 5e-3]
    "learning_config.batch_size" = [8, 16]

Each cell (:func:`crucible_harness.grid.expand`) is one ``training_run`` job
in the queue, with the cell id as job id and ``<experiment>/<cell>`` as its
idempotency key: submitting the same experiment again enqueues only the
cells the queue does not hold yet, so a runner killed mid-submission (or
re-run after some cells finished) never runs a cell twice. ``crucible
worker`` processes claim and run the cells, as many in parallel as there
are workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from crucible_core._errors import reworded
from crucible_core.errors import ConfigError, CrucibleError, NotFound
from crucible_core.ir.codec import decode_file, to_builtins
from crucible_core.ir.experiment import Experiment
from crucible_core.ir.training import TrainingJob
from crucible_harness.grid import Cell, expand

__all__ = [
    "FINAL",
    "CellPlan",
    "CellStatus",
    "LoadedExperiment",
    "Miss",
    "cell_status",
    "load",
    "missed_targets",
    "plan_cells",
    "run_metrics",
    "submit",
]


@dataclass(frozen=True)
class LoadedExperiment:
    """An experiment file, its base job and its cells."""

    path: Path
    experiment: Experiment
    base: TrainingJob
    cells: list[Cell]


def load(path: Path) -> LoadedExperiment:
    """Decode and check ``path``: every grid key against TrainingJob, every cell's job as IR.

    Mistakes are ConfigErrors naming the file and the field (exit 2).
    """
    experiment = decode_file(path, Experiment)
    if not isinstance(experiment, Experiment):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ConfigError(f"{path}: not an Experiment")
    job_ref = experiment.metadata.get("job")
    if not isinstance(job_ref, str) or not job_ref:
        raise ConfigError(
            f"{path}: metadata.job must name the base TrainingJob file",
            hint='add metadata = { job = "train.toml" } (relative to the experiment file)',
        )
    base = decode_file(path.parent / job_ref, TrainingJob)
    try:
        cells = expand(
            base,
            experiment.parameter_grid,
            seeds=experiment.seeds,
            repeats=experiment.repeats,
            prefix=experiment.id,
        )
    except CrucibleError as exc:
        raise reworded(exc, f"{path}: {exc.message}") from None
    return LoadedExperiment(path=path, experiment=experiment, base=base, cells=cells)


def _key(loaded: LoadedExperiment, cell: Cell) -> str:
    return f"{loaded.experiment.id}/{cell.cell_id}"


def submit(loaded: LoadedExperiment, scheduler: Any) -> list[tuple[Cell, str, bool]]:
    """Enqueue every cell the queue does not hold yet: ``(cell, status, new)`` per cell."""
    from crucible_core.ir.work import Job

    before = {c.cell_id: _status(scheduler, c.cell_id) for c in loaded.cells}
    jobs = [
        Job(
            id=cell.cell_id,
            kind="training_run",
            payload=to_builtins(cell.job),
            idempotency_key=_key(loaded, cell),
            metadata={
                "experiment": loaded.experiment.id,
                "overrides": {k: str(v) for k, v in cell.overrides.items()},
                "seed": str(cell.seed),
            },
        )
        for cell in loaded.cells
    ]
    stored = scheduler.enqueue_many(jobs)
    return [
        (cell, str(job.status), before[cell.cell_id] is None)
        for cell, job in zip(loaded.cells, stored, strict=True)
    ]


def _status(scheduler: Any, job_id: str) -> str | None:
    try:
        return str(scheduler.get(job_id).status)
    except NotFound:
        return None


@dataclass(frozen=True)
class CellStatus:
    """A cell and its job's status in the queue (``not submitted`` if absent)."""

    cell: Cell
    status: str


def cell_status(loaded: LoadedExperiment, scheduler: Any) -> list[CellStatus]:
    """Every cell's status in the queue."""
    return [
        CellStatus(cell=c, status=_status(scheduler, c.cell_id) or "not submitted")
        for c in loaded.cells
    ]


def _flatten(data: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for k, v in cast(dict[str, Any], data).items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(data, int | float) and not isinstance(data, bool):
        out[prefix.rstrip(".")] = float(data)
    return out


def run_metrics(run_dir: Path) -> dict[str, float]:
    """A finished cell's numbers: its manifest's ``training`` summary, flattened
    (``final_loss``, ``steps``, ``evaluation.validation.loss``...)."""
    from crucible_core.records.artifacts import read_manifest

    return _flatten(read_manifest(run_dir).get("training") or {})


@dataclass(frozen=True)
class Miss:
    """A quality target a finished cell did not meet (``observed`` None: not recorded)."""

    cell_id: str
    target: str
    observed: float | None


#: Queue states of a cell that will not change without someone acting.
FINAL = frozenset({"succeeded", "failed", "cancelled", "dead", "budget_exhausted"})


def missed_targets(loaded: LoadedExperiment, statuses: list[CellStatus]) -> list[Miss]:
    """Every (succeeded cell, quality target) pair that misses; empty when all are met."""
    from crucible_core.records import paths

    misses: list[Miss] = []
    for s in statuses:
        if s.status != "succeeded":
            continue
        metrics = run_metrics(paths.run_dir(s.cell.cell_id))
        for t in loaded.experiment.quality_targets:
            observed = metrics.get(t.metric)
            if observed is None or not t.check(observed):
                misses.append(Miss(s.cell.cell_id, f"{t.metric} {t.op} {t.value}", observed))
    return misses


@dataclass(frozen=True)
class CellPlan:
    """``crucible plan``'s estimate of one cell (``cost`` in ``currency``, seconds)."""

    cell: Cell
    ok: bool
    cost: float | None
    duration_s: float | None
    steps: int | None
    problems: list[str]


def plan_cells(loaded: LoadedExperiment) -> list[CellPlan]:
    """Each cell's plan (:func:`crucible_core.train.plan.make_plan`: checks and estimates,
    measuring a step on the backend when it can): what ``run --dry-run`` shows."""
    from crucible_core.plugins import get_host
    from crucible_core.train.plan import make_plan

    host = get_host()
    out: list[CellPlan] = []
    for cell in loaded.cells:
        plan = make_plan(cell.job, host=host)
        out.append(
            CellPlan(
                cell=cell,
                ok=plan.ok,
                cost=plan.cost,
                duration_s=plan.duration_s,
                steps=plan.steps,
                problems=[f"{p.field}: {p.message}" for p in plan.problems],
            )
        )
    return out

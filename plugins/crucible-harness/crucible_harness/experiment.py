"""Experiments over a grid of training runs, scheduled through the durable queue.

An experiment file is an :class:`~crucible_core.ir.Experiment` (TOML/JSON/YAML)
whose ``job`` is the base :class:`~crucible_core.ir.TrainingJob` (a table, or
the path of a TrainingJob file relative to the experiment file) and whose
``parameter_grid``, ``seeds`` and ``repeats`` describe the cells::

    id = "dates-grid"
    job = "dates-local.toml"
    seeds = [0, 1]

    [parameter_grid]
    "learning_config.optimizer.lr" = [1e-3, 5e-3]
    "learning_config.batch_size" = [8, 16]

    [evaluation]                 # each trained cell is scored on this (optional)
    dataset = "data/dates.jsonl"
    metrics = ["exact_match"]
    n = 20

    [budget]                     # the whole experiment's limit (optional)
    max_wall_time = 3600         # seconds since its first cell was submitted
    max_cost = 5.0               # crucible plan's estimate, summed over cells

The old form, ``metadata = { job = "..." }``, is still read, with a
deprecation note (:attr:`LoadedExperiment.notes`, printed by the CLI).

Each cell (:func:`crucible_harness.grid.expand`) is one ``custom`` job in the
queue running :func:`crucible_harness.cell.run_cell` (its training run, then
its evaluation), with the cell id as job id and ``<experiment>/<cell>`` as
its idempotency key: submitting the same experiment again enqueues only the
cells the queue does not hold yet, so a runner killed mid-experiment (or
re-run after some cells finished) never runs a finished cell again.
``crucible worker`` processes claim and run the cells, as many in parallel
as there are worker slots; :func:`run` can also run them in its own process
(``--workers N``), through an executor (``--executor ray``).

**Budget.** ``max_cost`` is applied before anything runs: cells are taken in
order while the sum of their estimated costs (``crucible plan``) stays
within it; the rest are not submitted (``over budget``). ``max_wall_time`` is
applied while :func:`run` waits: once that many seconds have passed since
the experiment's first cell was submitted, every cell still waiting in the
queue is cancelled; cells already running finish. (A cell claimed in the
very instant of that check may be cancelled too.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from crucible_core._errors import reworded
from crucible_core.errors import ConfigError, CrucibleError, NotFound
from crucible_core.ir.codec import decode_file, to_builtins
from crucible_core.ir.experiment import CellEval, Experiment
from crucible_core.ir.training import TrainingJob
from crucible_harness.grid import Cell, expand

__all__ = [
    "DOCUMENT_KEY",
    "FINAL",
    "OVER_BUDGET",
    "CellPlan",
    "CellStatus",
    "LoadedExperiment",
    "Miss",
    "RunOutcome",
    "cell_eval",
    "cell_job",
    "cell_status",
    "document",
    "from_document",
    "load",
    "missed_targets",
    "over_budget",
    "plan_cells",
    "run",
    "run_metrics",
    "statuses",
    "submit",
    "within_budget",
]

#: How a cell not submitted because of ``budget.max_cost`` shows.
OVER_BUDGET = "over budget"


@dataclass(frozen=True)
class LoadedExperiment:
    """An experiment file, its base job, its cells and what to say about the file."""

    path: Path
    experiment: Experiment
    base: TrainingJob
    cells: list[Cell]
    evaluation: CellEval | None = None
    notes: list[str] = field(default_factory=list[str])


def _base_job(path: Path, experiment: Experiment, notes: list[str]) -> TrainingJob:
    from crucible_core.ir.paths import resolve_paths

    ref: object = experiment.job
    if ref is None:
        legacy = experiment.metadata.get("job")
        if isinstance(legacy, str) and legacy:
            notes.append(
                f"{path}: metadata.job is deprecated; write job = {legacy!r} at the top level"
            )
            ref = legacy
    if ref is None:
        raise ConfigError(
            f"{path}: job must name the base TrainingJob",
            hint='add job = "train.toml" (a file relative to the experiment file) or a [job] table',
        )
    if isinstance(ref, TrainingJob):
        return resolve_paths(ref, path.parent)
    return decode_file(path.parent / cast(str, ref), TrainingJob)


def _check_metrics(path: Path, evaluation: CellEval) -> None:
    """A ConfigError (did-you-mean) for a metric no plugin registers, before any cell trains."""
    import difflib

    from crucible_core.plugins import get_host

    known = list(get_host().registrations("metric"))
    for name in evaluation.metrics:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(
                f"{path}: evaluation.metrics: no metric named {name!r}",
                hint=(f"did you mean {close[0]!r}? " if close else "")
                + "registered metrics: "
                + ", ".join(sorted(known)),
            )


def load(path: Path) -> LoadedExperiment:
    """Decode and check ``path``: every grid key against TrainingJob, every cell's job as IR.

    Mistakes are ConfigErrors naming the file and the field (exit 2).
    """
    import msgspec

    from crucible_core.ir.paths import resolve_uri

    experiment = decode_file(path, Experiment)
    if not isinstance(experiment, Experiment):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ConfigError(f"{path}: not an Experiment")
    notes: list[str] = []
    base = _base_job(path, experiment, notes)
    if experiment.budget is not None and experiment.budget.max_tokens is not None:
        raise ConfigError(
            f"{path}: budget.max_tokens is a limit of one run, not of an experiment",
            hint="set learning_config's job budget.max_tokens in the base job; "
            "an experiment's budget takes max_wall_time and max_cost",
        )
    evaluation = experiment.evaluation
    if evaluation is not None:
        _check_metrics(path, evaluation)
        uri = resolve_uri(evaluation.dataset, path.parent.absolute())
        if uri != evaluation.dataset:
            evaluation = msgspec.structs.replace(evaluation, dataset=uri)
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
    return LoadedExperiment(
        path=path,
        experiment=experiment,
        base=base,
        cells=cells,
        evaluation=evaluation,
        notes=notes,
    )


#: The cell metadata key holding the experiment's :func:`document`.
DOCUMENT_KEY = "experiment_document"


def document(loaded: LoadedExperiment) -> dict[str, Any]:
    """The experiment as self-contained data: its file with ``job`` inlined (the base
    TrainingJob, paths resolved) and ``evaluation.dataset`` resolved.

    Stored in every cell's job metadata (:data:`DOCUMENT_KEY`) so whoever reads the
    queue (the server's dashboard) can rebuild the experiment with
    :func:`from_document` and render its report without the file, wherever the
    cells were submitted from.
    """
    import msgspec

    ex = msgspec.structs.replace(loaded.experiment, job=loaded.base, evaluation=loaded.evaluation)
    return cast(dict[str, Any], to_builtins(ex))


def from_document(doc: Any, *, where: str = "stored experiment") -> LoadedExperiment:
    """The :class:`LoadedExperiment` of a :func:`document` (``where`` names it in errors)."""
    from crucible_core.ir.codec import convert

    experiment = convert(doc, Experiment)
    base = experiment.job
    if not isinstance(base, TrainingJob):
        raise ConfigError(f"{where}: job is not an inline TrainingJob")
    cells = expand(
        base,
        experiment.parameter_grid,
        seeds=experiment.seeds,
        repeats=experiment.repeats,
        prefix=experiment.id,
    )
    return LoadedExperiment(
        path=Path(where),
        experiment=experiment,
        base=base,
        cells=cells,
        evaluation=experiment.evaluation,
    )


def _key(loaded: LoadedExperiment, cell: Cell) -> str:
    return f"{loaded.experiment.id}/{cell.cell_id}"


def cell_job(loaded: LoadedExperiment, cell: Cell) -> Any:
    """The queue :class:`~crucible_core.ir.work.Job` of ``cell`` (see the module docstring)."""
    from crucible_core.ir.work import Job
    from crucible_harness.cell import TARGET

    args: dict[str, Any] = {"job": to_builtins(cell.job)}
    if loaded.evaluation is not None:
        args["evaluation"] = to_builtins(loaded.evaluation)
    return Job(
        id=cell.cell_id,
        kind="custom",
        payload={"target": TARGET, "args": args},
        idempotency_key=_key(loaded, cell),
        metadata={
            "experiment": loaded.experiment.id,
            "overrides": {k: str(v) for k, v in cell.overrides.items()},
            "seed": str(cell.seed),
            DOCUMENT_KEY: document(loaded),
        },
    )


def submit(
    loaded: LoadedExperiment, scheduler: Any, cells: Sequence[Cell] | None = None
) -> list[tuple[Cell, str, bool]]:
    """Enqueue every cell (of ``cells``, default all) the queue does not hold yet:
    ``(cell, status, new)`` per cell."""
    chosen = list(loaded.cells if cells is None else cells)
    if not chosen:
        return []
    before = {c.cell_id: _status(scheduler, c.cell_id) for c in chosen}
    stored = scheduler.enqueue_many([cell_job(loaded, c) for c in chosen])
    return [
        (cell, str(job.status), before[cell.cell_id] is None)
        for cell, job in zip(chosen, stored, strict=True)
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


def cell_eval(run_dir: Path, evaluation: CellEval | None) -> Any:
    """The newest ``eval-<id>.json`` of ``run_dir`` on ``evaluation``'s dataset
    (an :class:`~crucible_harness.evaluate.EvalResult`), or None."""
    if evaluation is None:
        return None
    from crucible_harness.evaluate import read_eval

    found = [read_eval(p) for p in sorted(run_dir.glob("eval-*.json"))]
    found = [r for r in found if r.dataset == evaluation.dataset]
    return max(found, key=lambda r: (r.created_at, r.eval_id)) if found else None


def run_metrics(run_dir: Path, evaluation: CellEval | None = None) -> dict[str, float]:
    """A finished cell's numbers: its manifest's ``training`` summary, flattened
    (``final_loss``, ``steps``, ``evaluation.validation.loss``...), and with an
    ``evaluation``, its scores as ``eval.<metric>``."""
    from crucible_core.records.artifacts import read_manifest

    out = _flatten(read_manifest(run_dir).get("training") or {})
    result = cell_eval(run_dir, evaluation)
    if result is not None:
        out.update({f"eval.{m.name}": m.score for m in result.metrics})
    return out


@dataclass(frozen=True)
class Miss:
    """A quality target a finished cell did not meet (``observed`` None: not recorded)."""

    cell_id: str
    target: str
    observed: float | None


#: Queue states of a cell that will not change without someone acting.
FINAL = frozenset({"succeeded", "failed", "cancelled", "dead", "budget_exhausted", OVER_BUDGET})


def missed_targets(loaded: LoadedExperiment, statuses: list[CellStatus]) -> list[Miss]:
    """Every (succeeded cell, quality target) pair that misses; empty when all are met."""
    from crucible_core.records import paths

    misses: list[Miss] = []
    for s in statuses:
        if s.status != "succeeded":
            continue
        metrics = run_metrics(paths.run_dir(s.cell.cell_id), loaded.evaluation)
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


def plan_cells(loaded: LoadedExperiment, *, measure: bool = True) -> list[CellPlan]:
    """Each cell's plan (:func:`crucible_core.train.plan.make_plan`: checks and estimates,
    measuring a step on the backend when it can and ``measure``): what ``run --dry-run``
    shows."""
    from crucible_core.plugins import get_host
    from crucible_core.train.plan import make_plan

    host = get_host()
    out: list[CellPlan] = []
    for cell in loaded.cells:
        plan = make_plan(cell.job, host=host, measure=measure)
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


def within_budget(loaded: LoadedExperiment, plans: Sequence[CellPlan]) -> list[Cell]:
    """The cells, in order, while their summed estimated cost stays within
    ``budget.max_cost`` (all of them without one)."""
    budget = loaded.experiment.budget
    if budget is None or budget.max_cost is None:
        return list(loaded.cells)
    spent = 0.0
    out: list[Cell] = []
    for p in plans:
        spent += p.cost or 0.0
        if spent > budget.max_cost:
            break
        out.append(p.cell)
    return out


@dataclass
class RunOutcome:
    """What :func:`run` did: each cell's status, which it submitted, what the budget stopped."""

    statuses: list[CellStatus]
    submitted: list[str]
    over_budget: list[str]
    stopped_by_time: list[str]
    waited: bool

    def finished(self) -> bool:
        """Whether every cell has reached a final state."""
        return all(s.status in FINAL for s in self.statuses)


def over_budget(loaded: LoadedExperiment, scheduler: Any) -> set[str]:
    """The cells ``budget.max_cost`` leaves out (:func:`within_budget` on ``crucible
    plan``'s estimates, without measuring) that the queue does not hold; empty without
    a cost budget."""
    budget = loaded.experiment.budget
    if budget is None or budget.max_cost is None:
        return set()
    keep = {c.cell_id for c in within_budget(loaded, plan_cells(loaded, measure=False))}
    return {
        c.cell_id
        for c in loaded.cells
        if c.cell_id not in keep and _status(scheduler, c.cell_id) is None
    }


def statuses(loaded: LoadedExperiment, scheduler: Any) -> list[CellStatus]:
    """Every cell's status, ``over budget`` for the cells the cost budget leaves out."""
    return _statuses(loaded, scheduler, over_budget(loaded, scheduler))


def _statuses(loaded: LoadedExperiment, scheduler: Any, over: set[str]) -> list[CellStatus]:
    return [
        CellStatus(s.cell, OVER_BUDGET) if s.cell.cell_id in over else s
        for s in cell_status(loaded, scheduler)
    ]


def _started_at(scheduler: Any, cells: Sequence[Cell]) -> float | None:
    """When the experiment's first cell was submitted (epoch seconds), if any was."""
    times: list[float] = []
    for c in cells:
        try:
            created = scheduler.get(c.cell_id).created_at
        except NotFound:
            continue
        if created is not None:
            times.append(created.timestamp())
    return min(times) if times else None


def run(
    loaded: LoadedExperiment,
    scheduler: Any,
    *,
    workers: int = 0,
    executor: Any = None,
    wait: bool | None = None,
    lease_s: float = 30.0,
    poll_s: float = 0.25,
    on_tick: Callable[[list[CellStatus]], None] | None = None,
    on_event: Callable[[Any], Any] | None = None,
) -> RunOutcome:
    """Submit the cells the queue lacks (within ``budget.max_cost``) and, if
    ``wait`` (default: when ``workers`` > 0), wait until every cell has finished.

    With ``workers`` > 0 the cells run in this process too, in a
    :class:`~crucible_core.queue.worker.Worker` with that many slots (through
    ``executor`` when given, e.g. a ``RayExecutor``); ``crucible worker``
    processes elsewhere may claim cells as well. While waiting,
    ``budget.max_wall_time`` is enforced (module docstring). Killing this
    process loses nothing: the queue holds every cell, and calling ``run``
    again submits nothing twice and waits for (or runs) what is left.
    ``on_tick`` sees the statuses at every poll; ``on_event`` every event of
    the cells this process runs (``train.step``, ``eval.metric``...).
    """
    import threading

    budget = loaded.experiment.budget
    over = over_budget(loaded, scheduler)
    chosen = [c for c in loaded.cells if c.cell_id not in over]
    submitted = [c.cell_id for c, _, new in submit(loaded, scheduler, chosen) if new]
    wait = workers > 0 if wait is None else wait
    outcome = RunOutcome(
        statuses=_statuses(loaded, scheduler, over),
        submitted=submitted,
        over_budget=sorted(over),
        stopped_by_time=[],
        waited=wait,
    )
    if not wait:
        return outcome
    worker: Any = None
    thread: threading.Thread | None = None
    if workers > 0:
        from crucible_core.queue.worker import Worker

        worker = Worker(
            scheduler, concurrency=workers, lease_s=lease_s, poll_s=poll_s, executor=executor
        )
        if on_event is not None:
            worker.bus.subscribe(on_event, name="experiment")
        thread = threading.Thread(target=worker.run, name="experiment-worker", daemon=True)
        thread.start()
    max_wall = budget.max_wall_time if budget is not None else None
    start = _started_at(scheduler, loaded.cells) if max_wall is not None else None
    try:
        while True:
            outcome.statuses = _statuses(loaded, scheduler, over)
            if on_tick is not None:
                on_tick(outcome.statuses)
            if outcome.finished():
                break
            if max_wall is not None and start is not None and time.time() - start > max_wall:
                for s in outcome.statuses:
                    if s.status in ("pending", "queued"):
                        scheduler.cancel(s.cell.cell_id)
                        outcome.stopped_by_time.append(s.cell.cell_id)
                max_wall = None  # once: what still runs finishes
                continue
            if thread is not None and not thread.is_alive():
                raise RuntimeError("the experiment's worker stopped while cells were left")
            time.sleep(poll_s)
    finally:
        if worker is not None and thread is not None:
            worker.stop()
            thread.join(timeout=60)
    return outcome

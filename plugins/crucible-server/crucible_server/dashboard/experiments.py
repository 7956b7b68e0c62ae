"""The experiments pages' data: crucible-harness grids, read back from the queue.

``crucible experiment`` (crucible-harness) submits each cell of a grid as a
``custom`` job (training then evaluation; ``training_run`` before harness
cells were evaluated) whose metadata names the experiment, the cell's
overrides and its seed. These functions group the caller's jobs by that
experiment id; a cell's numbers are crucible-harness's
:func:`~crucible_harness.experiment.run_metrics` of its run (the manifest's
training summary), when crucible-harness is installed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from crucible_core.errors import CrucibleError, NotFound
from crucible_core.ir.work import Job
from crucible_core.records.paths import run_dir

__all__ = ["CELL_KINDS", "cell_jobs", "experiment_cells", "experiment_list"]

#: The job kinds a grid cell is submitted as (current, then older harness releases').
CELL_KINDS = ("custom", "training_run")


def cell_jobs(scheduler: Any, tenant_id: str | None) -> list[Job]:
    """The tenant's jobs of the kinds a grid cell can be (grouping reads their metadata)."""
    return [j for kind in CELL_KINDS for j in scheduler.list(kind=kind, tenant_id=tenant_id)]


def _experiment_of(job: Job) -> str | None:
    name = job.metadata.get("experiment")
    return name if isinstance(name, str) and name else None


def experiment_list(jobs: Iterable[Job]) -> list[dict[str, Any]]:
    """Each experiment among ``jobs``: its id, cell count and cells per status."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        name = _experiment_of(job)
        if name is not None:
            groups.setdefault(name, []).append(job)
    return [
        {
            "id": name,
            "cells": len(cells),
            "statuses": dict(Counter(str(c.status) for c in cells)),
            "created_at": min(
                (c.created_at.isoformat() for c in cells if c.created_at), default=None
            ),
        }
        for name, cells in sorted(groups.items())
    ]


def _metrics(job: Job) -> dict[str, float]:
    try:
        from crucible_harness.experiment import run_metrics
    except ImportError:
        return {}
    try:
        return run_metrics(run_dir(job.id))
    except CrucibleError:
        return {}  # not finished: no manifest summary yet


def experiment_cells(jobs: Iterable[Job], experiment: str) -> dict[str, Any]:
    """The cells of ``experiment``: overrides, seed, status and metrics; NotFound if none."""
    cells = [j for j in jobs if _experiment_of(j) == experiment]
    if not cells:
        raise NotFound(f"no experiment {experiment!r}", hint="the experiments page lists them")
    keys = sorted({k for c in cells for k in dict(c.metadata.get("overrides") or {})})
    return {
        "id": experiment,
        "keys": keys,
        "cells": [
            {
                "id": c.id,
                "status": c.status,
                "seed": c.metadata.get("seed"),
                "overrides": dict(c.metadata.get("overrides") or {}),
                "metrics": _metrics(c) if c.status == "succeeded" else {},
            }
            for c in cells
        ],
    }

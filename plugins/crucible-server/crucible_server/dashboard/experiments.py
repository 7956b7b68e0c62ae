"""The experiments pages' data: crucible-harness grids, read back from the queue.

``crucible experiment`` (crucible-harness) submits each cell of a grid as a
``custom`` job (training then evaluation; ``training_run`` before harness
cells were evaluated) whose metadata names the experiment, the cell's
overrides and its seed. These functions group the caller's jobs by that
experiment id; a cell's numbers are crucible-harness's
:func:`~crucible_harness.experiment.run_metrics` of its run (the manifest's
training summary), when crucible-harness is installed.

The harness report (:mod:`crucible_harness.expreport`) needs the experiment
itself, not only its cells: crucible-harness stores the experiment as data
(:func:`crucible_harness.experiment.document`) in every cell's metadata when
it submits the grid, so the server rebuilds it from the queue alone (the
file may live on another machine). :class:`Reports` renders the tables and
the HTML page from the newest cell's copy, the same bytes
``crucible experiment report`` writes for the same queue and runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from hashlib import sha256
from threading import Lock
from typing import Any

from crucible_core.errors import CrucibleError, NotFound
from crucible_core.ir.work import Job
from crucible_core.records.paths import run_dir

__all__ = ["CELL_KINDS", "Reports", "cell_jobs", "experiment_cells", "experiment_list"]

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


def _stored(jobs: Iterable[Job], experiment: str) -> Any:
    """The :class:`~crucible_harness.experiment.LoadedExperiment` stored with the
    newest cell of ``experiment`` (NotFound if none, or none stored one)."""
    cells = [j for j in jobs if _experiment_of(j) == experiment]
    if not cells:
        raise NotFound(f"no experiment {experiment!r}", hint="the experiments page lists them")
    try:
        from crucible_harness.experiment import DOCUMENT_KEY, from_document
    except ImportError:
        raise NotFound(
            f"experiment {experiment!r}: no report on this server",
            hint="install crucible-harness next to crucible-server",
        ) from None
    stored = [c for c in cells if isinstance(c.metadata.get(DOCUMENT_KEY), dict)]
    if not stored:
        raise NotFound(
            f"experiment {experiment!r}: its cells do not carry the experiment",
            hint="they were submitted by an older crucible-harness; "
            "use crucible experiment report FILE",
        )
    newest = max(stored, key=lambda c: (c.created_at is not None, c.created_at, c.id))
    return from_document(newest.metadata[DOCUMENT_KEY], where=f"experiment {experiment!r}")


class Reports:
    """The harness report of an experiment, rendered from the queue (module docstring).

    The HTML page (matplotlib figures) is kept per experiment and made again only
    when the Markdown report (statuses, metrics, manifests' sha256) changed.
    """

    def __init__(self) -> None:
        self._html: dict[str, tuple[str, str]] = {}
        self._lock = Lock()

    def _data(self, scheduler: Any, jobs: Iterable[Job], experiment: str) -> Any:
        from crucible_harness.experiment import statuses
        from crucible_harness.expreport import collect

        loaded = _stored(jobs, experiment)
        return collect(loaded, statuses(loaded, scheduler))

    def tables(self, scheduler: Any, jobs: Iterable[Job], experiment: str) -> dict[str, Any]:
        """The report's opening lines and tables (title, headers, rows) as data."""
        from crucible_harness.expreport import intro, tables

        data = self._data(scheduler, jobs, experiment)
        return {
            "id": experiment,
            "intro": intro(data),
            "tables": [{"title": t, "headers": h, "rows": r} for t, h, r in tables(data)],
        }

    def html(self, scheduler: Any, jobs: Iterable[Job], experiment: str) -> str:
        """The self-contained HTML report (figures as PNG data URIs)."""
        from crucible_harness.expreport import html_report, markdown_report

        data = self._data(scheduler, jobs, experiment)
        key = sha256(markdown_report(data).encode()).hexdigest()
        with self._lock:
            hit = self._html.get(experiment)
        if hit is not None and hit[0] == key:
            return hit[1]
        page = html_report(data)
        with self._lock:
            self._html[experiment] = (key, page)
        return page

"""Dependency rules of the queue (``depends_on``).

A job waits ``pending`` until every dependency succeeded
(:func:`release_dependents_of` queues it then); a dependency that ends any
other way fails it, transitively (:func:`end`, code ``dependency_failed``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from crucible_core.queue.rows import Tx, dependency_error, enc, move

__all__ = ["dep_statuses", "end", "release_dependents_of"]


def dep_statuses(conn: sqlite3.Connection, job_id: str) -> dict[str, str]:
    """The status of each dependency of ``job_id``."""
    return {
        str(d): str(s)
        for d, s in conn.execute(
            "SELECT d.dep_id, j.status FROM job_deps d JOIN jobs j ON j.id = d.dep_id "
            "WHERE d.job_id = ?",
            (job_id,),
        )
    }


def release_dependents_of(tx: Tx, job_id: str, score: Callable[[str, float], float]) -> None:
    """Queue the pending dependents of ``job_id`` whose dependencies have all succeeded."""
    conn = tx.conn
    rows = conn.execute(
        "SELECT j.id, j.priority FROM job_deps d JOIN jobs j ON j.id = d.job_id "
        "WHERE d.dep_id = ? AND j.status = 'pending'",
        (job_id,),
    ).fetchall()
    for dependent, priority in rows:
        unmet = conn.execute(
            "SELECT 1 FROM job_deps d JOIN jobs j ON j.id = d.dep_id "
            "WHERE d.job_id = ? AND j.status != 'succeeded' LIMIT 1",
            (dependent,),
        ).fetchone()
        if unmet is None:
            move(
                tx,
                dependent,
                "pending",
                "queued",
                note="dependencies succeeded",
                sets={"score": score(str(priority), tx.now)},
            )


def end(
    tx: Tx,
    job_id: str,
    frm: str,
    to: str,
    *,
    worker: str | None = None,
    note: str | None = None,
    sets: Mapping[str, Any] | None = None,
) -> None:
    """Move to a terminal status other than success and fail the job's dependents."""
    move(tx, job_id, frm, to, worker=worker, note=note, sets=sets)
    todo: list[str] = [job_id]
    while todo:
        dep = todo.pop()
        rows = tx.conn.execute(
            "SELECT j.id FROM job_deps d JOIN jobs j ON j.id = d.job_id "
            "WHERE d.dep_id = ? AND j.status = 'pending'",
            (dep,),
        ).fetchall()
        for (dependent,) in rows:
            error = dependency_error(job_id, to, dep if dep != job_id else None)
            move(
                tx,
                dependent,
                "pending",
                "failed",
                note=error.message,
                sets={"error": enc(error)},
            )
            todo.append(dependent)

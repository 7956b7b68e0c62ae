"""Checking and rebuilding a damaged ``crucible.db`` (``crucible jobs recover``).

Why: a damaged index page is not reported by ordinary queries, which then
see wrong rows (a worker claimed jobs the table says are not queued and
looped). :func:`check_file` runs ``PRAGMA quick_check``; :func:`repair`
rebuilds the file from its tables.

How :func:`repair` works: a fresh file is built beside the damaged one with
the same schema; every table is copied with ``INSERT ... SELECT *`` (a scan
of the table's own b-tree, which never reads an index), then every index is
created anew from the copied rows and ``user_version`` is carried over. The
damaged file (and its ``-wal``/``-shm``) is renamed to
``<name>.corrupt-<UTC stamp>`` and the rebuilt one takes its place. So a
damaged *index* loses nothing. If a *table* page is damaged the copy fails
and nothing is changed; the error says so and names the sqlite3 shell's
``.recover``, which salvages rows page by page.

Run it with no worker running: a worker writing meanwhile would write into
the file being replaced.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from crucible_core.errors import ConfigError, NotFound
from crucible_core.queue._db import describe_problems, quick_check
from crucible_core.records.artifacts import fsync_dir

__all__ = ["RepairReport", "check_file", "repair"]


@dataclass(frozen=True)
class RepairReport:
    """What :func:`repair` found and did (``backup`` is None when nothing was wrong)."""

    path: Path
    problems: list[str]
    backup: Path | None = None
    rows: dict[str, int] = field(default_factory=dict[str, int])


def check_file(path: Path) -> list[str]:
    """``PRAGMA quick_check`` of the database at ``path``: its problems, [] if sound.

    A file that SQLite cannot even open as a database counts as one problem.
    NotFound if there is no such file (nothing is created).
    """
    if not path.is_file():
        raise NotFound(f"{path}: no such database file")
    try:
        conn = sqlite3.connect(path, timeout=10.0)
    except sqlite3.Error as exc:
        return [str(exc)]
    try:
        return quick_check(conn)
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    finally:
        conn.close()


def repair(path: Path) -> RepairReport:
    """Rebuild ``path`` if ``PRAGMA quick_check`` finds it damaged (module docstring)."""
    problems = check_file(path)
    if not problems:
        return RepairReport(path, [])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    fresh = path.with_name(f"{path.name}.rebuilding")
    backup = path.with_name(f"{path.name}.corrupt-{stamp}")
    for stale in (fresh, Path(f"{fresh}-journal")):
        stale.unlink(missing_ok=True)
    try:
        rows = _rebuild(path, fresh)
    except sqlite3.Error as exc:
        for stale in (fresh, Path(f"{fresh}-journal")):
            stale.unlink(missing_ok=True)
        raise ConfigError(
            f"{path}: cannot rebuild the database ({exc}); nothing was changed",
            hint="a table itself is damaged: stop every worker, salvage what SQLite can "
            f'read with `sqlite3 {path} ".recover" | sqlite3 {path}.recovered`, then '
            f"mv {path} {path}.bad and mv {path}.recovered {path}; if the file is not a "
            f"database at all, move the file aside (mv {path} {path}.bad) to start afresh",
            path=str(path),
        ) from None
    after = check_file(fresh)
    if after:
        fresh.unlink(missing_ok=True)
        raise ConfigError(
            f"{path}: the rebuilt copy is still damaged ({describe_problems(after)}); "
            "nothing was changed",
            path=str(path),
        )
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{backup}{suffix}")
    os.replace(fresh, path)
    fsync_dir(path.parent)
    return RepairReport(path, problems, backup, rows)


def _rebuild(src: Path, dst: Path) -> dict[str, int]:
    """Copy every table of ``src`` into a new file ``dst``, then build its indexes."""
    conn = sqlite3.connect(dst, isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS src", (str(src),))  # read through its WAL
        schema: list[tuple[str, str, str]] = [
            (str(t), str(n), str(sql))
            for t, n, sql in conn.execute(
                "SELECT type, name, sql FROM src.sqlite_master WHERE sql IS NOT NULL "
                "AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
            )
        ]
        version = int(conn.execute("PRAGMA src.user_version").fetchone()[0])
        rows: dict[str, int] = {}
        conn.execute("BEGIN")
        for kind, name, sql in schema:
            if kind == "table":
                conn.execute(sql)  # creates main.<name>: unqualified names go to main
                quoted = '"' + name.replace('"', '""') + '"'
                cur = conn.execute(f"INSERT INTO main.{quoted} SELECT * FROM src.{quoted}")
                rows[name] = cur.rowcount
        for kind, _name, sql in schema:
            if kind != "table":
                conn.execute(sql)
        conn.execute(f"PRAGMA main.user_version = {version}")
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE src")
        return rows
    finally:
        conn.close()

"""Switching a SQLite database to WAL mode when other connections may be doing the same.

Every store here (the job queue, the token store, the router's state and
limits, the registry) runs in WAL mode so readers never wait for a writer.
The switch itself needs a moment of exclusive access, and two connections
that open a new database at once and both ask for it can get "database is
locked" straight away: SQLite skips its busy handler there, since waiting
could deadlock. :func:`use_wal` retries the switch with short sleeps.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["use_wal"]


def use_wal(conn: sqlite3.Connection, *, timeout_s: float = 10.0) -> None:
    """Put ``conn``'s database (a file) in WAL mode, retrying while it is locked.

    Raises the last ``sqlite3.OperationalError`` after ``timeout_s``, or one
    saying so if the database cannot use WAL (it then reports another mode).
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        try:
            row = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            continue
        if row is None or str(row[0]).lower() != "wal":
            raise sqlite3.OperationalError(f"could not switch to WAL (journal_mode={row})")
        return

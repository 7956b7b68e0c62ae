"""``BreakerStateFile``: breakers' last known states in SQLite, for ``crucible backends status``.

Why: a breaker lives in the process that routes, but the question "which
backends are open?" is asked from another process (the CLI). Each router writes
one row per member when its breaker changes state (not per call, so the file
costs nothing on the hot path); any process reads them back.

The file is ``$CRUCIBLE_HOME/router.db`` unless a path is given. Rows are keyed
by the member's name; ``updated_at`` and ``retry_at`` are wall-clock seconds
(``time.time``), because monotonic clocks are not comparable across processes.
A router started with the file begins with the breakers it records as open
(until their ``retry_at``); after that, routing decisions are made from the
in-process breakers only: the file is not consulted per call.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from crucible_core.records.wal import use_wal

__all__ = ["BreakerStateFile", "default_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS breakers (
  backend TEXT PRIMARY KEY,
  state TEXT NOT NULL,
  consecutive_failures INTEGER NOT NULL,
  opens INTEGER NOT NULL,
  reason TEXT,
  retry_at REAL,
  updated_at REAL NOT NULL,
  pid INTEGER NOT NULL
)
"""


def default_path() -> Path:
    """``$CRUCIBLE_HOME/router.db``."""
    from crucible_core.records.paths import crucible_home

    return crucible_home() / "router.db"


class BreakerStateFile:
    """Write and read breaker rows in the SQLite file at ``path`` (created on first write)."""

    def __init__(self, path: Path | str | None = None, *, wall: Callable[[], float] = time.time):
        self.path = Path(path) if path is not None else default_path()
        self._wall = wall

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=5.0)
        use_wal(conn, timeout_s=5.0)
        conn.execute(_SCHEMA)
        return conn

    def write(self, backend: str, snapshot: Mapping[str, Any], reason: str | None = None) -> None:
        """Record ``backend``'s breaker ``snapshot`` (from ``CircuitBreaker.snapshot``)."""
        import os

        now = self._wall()
        retry = float(snapshot.get("retry_in_s") or 0.0)
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT OR REPLACE INTO breakers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    backend,
                    str(snapshot["state"]),
                    int(snapshot["consecutive_failures"]),
                    int(snapshot["opens"]),
                    reason,
                    now + retry if snapshot["state"] == "open" else None,
                    now,
                    os.getpid(),
                ),
            )

    def read(self) -> list[dict[str, Any]]:
        """Every recorded backend, by name; empty when the file does not exist."""
        if not self.path.exists():
            return []
        with closing(self._connect()) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM breakers ORDER BY backend").fetchall()
        return [dict(r) for r in rows]

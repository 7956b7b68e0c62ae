"""use_wal: connections that open a new database at once all get it in WAL mode."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from crucible_core.records.wal import use_wal


def test_racing_connections_all_switch_a_new_database_to_wal(tmp_path: Path) -> None:
    """Without the retry, about one round in five failed here with "database is locked"
    (four connections asking at once; SQLite does not wait there)."""
    for round_ in range(40):
        path = tmp_path / f"db{round_}.sqlite"
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_one(
            path: Path = path,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            conn = sqlite3.connect(path, timeout=10, isolation_level=None)
            try:
                barrier.wait()
                use_wal(conn)
            except BaseException as exc:  # reported below, on the test's thread
                errors.append(exc)
            finally:
                conn.close()

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_database_that_cannot_use_wal_is_an_error() -> None:
    conn = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError, match="could not switch to WAL"):
        use_wal(conn)
    conn.close()

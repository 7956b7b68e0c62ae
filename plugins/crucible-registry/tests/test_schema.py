"""The registry file: WAL, schema version, migrations applied one transaction each."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from crucible_registry import Registry
from crucible_registry.db import MIGRATIONS, connect

from crucible_core.errors import ConfigError


def _version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_a_new_file_is_created_at_the_current_version_in_wal_mode(home: Path) -> None:
    with Registry() as reg:
        assert reg.models() == []
    path = home / "registry.db"
    assert _version(path) == len(MIGRATIONS)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_old_file_is_upgraded_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    step2 = "CREATE TABLE extra (x INTEGER); INSERT INTO extra VALUES (7)"
    connect(path, migrations=MIGRATIONS).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO models (name, created_at) VALUES ('kept', 'now')")
    conn = connect(path, migrations=(*MIGRATIONS, step2))
    assert conn.execute("SELECT x FROM extra").fetchall() == [(7,)]
    assert conn.execute("SELECT name FROM models").fetchall() == [("kept",)]
    conn.close()
    assert _version(path) == len(MIGRATIONS) + 1


def test_a_failing_migration_leaves_the_file_at_the_last_complete_version(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    broken = "CREATE TABLE half (x INTEGER); INSERT INTO no_such_table VALUES (1)"
    with pytest.raises(Exception, match="no_such_table"):
        connect(path, migrations=(*MIGRATIONS, broken))
    assert _version(path) == len(MIGRATIONS)
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half" not in tables  # rolled back with the failed step
    assert "models" in tables


def test_a_file_from_a_newer_registry_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    connect(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    with pytest.raises(ConfigError, match="newer than this crucible-registry knows"):
        connect(path)


def test_a_corrupt_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="corrupt") as info:
        connect(path)
    assert str(path) in info.value.message


def test_a_version_1_file_gains_gates_evals_and_keeps_its_history_and_numbering(
    tmp_path: Path,
) -> None:
    """A file written by the first release (schema 1) is upgraded in place."""
    path = tmp_path / "r.db"
    connect(path, migrations=MIGRATIONS[:1]).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO models VALUES ('m', 'now')")
        for v in (1, 2, 3):
            conn.execute(
                "INSERT INTO versions (name, version, identity, run_id, run_dir, checkpoint,"
                " backend, base_model, config_hash, manifest_hash, metrics, created_at,"
                " created_by) VALUES ('m', ?, ?, 'r', '/r', 'final', 'toy', 'toy', 'c', 'h',"
                " '{}', 'now', 'me')",
                (v, f"id{v}"),
            )
        conn.execute(
            "INSERT INTO alias_events (name, alias, action, version, previous, actor, at,"
            " reason) VALUES ('m', 'prod', 'set', 3, NULL, 'me', 'now', 'first')"
        )
    with Registry(path) as reg:
        [event] = reg.history("m")
        assert (event.version, event.forced, event.evidence) == (3, False, [])
        assert reg.gates("m") == []
    conn = connect(path)
    assert conn.execute("SELECT last_version FROM models").fetchone() == (3,)
    conn.close()
    assert _version(path) == len(MIGRATIONS) == 2

"""The registry's SQLite file (``$CRUCIBLE_HOME/registry.db``): WAL, schema-versioned.

WAL mode so readers never block the writer; every write is one ``BEGIN
IMMEDIATE`` transaction (two processes never deadlock upgrading a read lock,
and a check-then-write inside it is atomic across processes). The schema
version is ``PRAGMA user_version``; :data:`MIGRATIONS` lists the scripts that
bring a file from version ``i`` to ``i + 1``, each applied in its own
transaction with the version bump, so an interrupted upgrade leaves the file
at the last complete version. A file newer than this code is refused.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from crucible_core.errors import ConfigError, CrucibleError
from crucible_core.records import paths
from crucible_core.records.wal import use_wal

__all__ = ["MIGRATIONS", "connect", "default_path", "migrate", "transaction"]

MIGRATIONS: Final[tuple[str, ...]] = (
    # 0 -> 1: names, versions and their artifacts, aliases and their history, tags.
    """
    CREATE TABLE models (
        name TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    );
    CREATE TABLE versions (
        name TEXT NOT NULL REFERENCES models(name),
        version INTEGER NOT NULL,
        identity TEXT NOT NULL,
        run_id TEXT NOT NULL,
        run_dir TEXT NOT NULL,
        checkpoint TEXT NOT NULL,
        step INTEGER,
        backend TEXT NOT NULL,
        base_model TEXT NOT NULL,
        base_revision TEXT,
        config_hash TEXT NOT NULL,
        dataset_hash TEXT,
        manifest_hash TEXT NOT NULL,
        metrics TEXT NOT NULL,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        archived_at TEXT,
        archived_by TEXT,
        archive_reason TEXT,
        PRIMARY KEY (name, version),
        UNIQUE (name, identity)
    );
    CREATE TABLE artifacts (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        role TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        store_uri TEXT NOT NULL,
        run_path TEXT NOT NULL,
        PRIMARY KEY (name, version, role),
        FOREIGN KEY (name, version) REFERENCES versions(name, version)
    );
    CREATE INDEX artifacts_by_sha ON artifacts(sha256);
    CREATE TABLE aliases (
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (name, alias),
        FOREIGN KEY (name, version) REFERENCES versions(name, version)
    );
    CREATE TABLE alias_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('set', 'rollback')),
        version INTEGER NOT NULL,
        previous INTEGER,
        reverts INTEGER REFERENCES alias_events(seq),
        actor TEXT NOT NULL,
        at TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX alias_events_by_alias ON alias_events(name, alias, seq);
    CREATE TABLE tags (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (name, version, key)
    );
    """,
    # 1 -> 2: promotion gates, evaluation records, alias removal, the evidence and
    # override of each move, version numbers never reused (models.last_version),
    # the dataset URI of a version (for lineage queries).
    """
    ALTER TABLE models ADD COLUMN last_version INTEGER NOT NULL DEFAULT 0;
    UPDATE models SET last_version =
        (SELECT COALESCE(MAX(v.version), 0) FROM versions v WHERE v.name = models.name);
    ALTER TABLE versions ADD COLUMN dataset_uri TEXT;
    CREATE TABLE alias_events_2 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('set', 'rollback', 'remove')),
        version INTEGER,
        previous INTEGER,
        reverts INTEGER,
        actor TEXT NOT NULL,
        at TEXT NOT NULL,
        reason TEXT NOT NULL,
        forced INTEGER NOT NULL DEFAULT 0,
        evidence TEXT
    );
    INSERT INTO alias_events_2
        (seq, name, alias, action, version, previous, reverts, actor, at, reason)
        SELECT seq, name, alias, action, version, previous, reverts, actor, at, reason
        FROM alias_events;
    DROP TABLE alias_events;
    ALTER TABLE alias_events_2 RENAME TO alias_events;
    CREATE INDEX alias_events_by_alias ON alias_events(name, alias, seq);
    CREATE TABLE gates (
        name TEXT NOT NULL REFERENCES models(name),
        alias TEXT NOT NULL,
        rule TEXT NOT NULL,
        added_at TEXT NOT NULL,
        added_by TEXT NOT NULL,
        PRIMARY KEY (name, alias, rule)
    );
    CREATE TABLE evals (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        eval_id TEXT NOT NULL,
        suite TEXT NOT NULL,
        metrics TEXT NOT NULL,
        samples TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        recorded_by TEXT NOT NULL,
        FOREIGN KEY (name, version) REFERENCES versions(name, version)
    );
    CREATE INDEX evals_by_version ON evals(name, version, seq)
    """,
)


def default_path() -> Path:
    """``$CRUCIBLE_HOME/registry.db``."""
    return paths.crucible_home() / "registry.db"


def _translate(path: Path, exc: sqlite3.Error) -> CrucibleError:
    text = str(exc).lower()
    if "not a database" in text or "malformed" in text:
        return ConfigError(
            f"{path}: the registry database is corrupt ({exc})",
            hint=f"move it aside (mv {path} {path}.bad) and register the versions again",
        )
    return CrucibleError(f"{path}: registry database error ({exc})", hint="try again")


def connect(path: Path, *, migrations: Sequence[str] = MIGRATIONS) -> sqlite3.Connection:
    """Open (creating and migrating) the registry database at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        use_wal(conn)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn, path, migrations)
    except sqlite3.Error as exc:
        conn.close()
        raise _translate(path, exc) from None
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, path: Path, migrations: Sequence[str]) -> int:
    """Apply the missing migrations, one transaction each; return the final version."""
    while True:
        with transaction(conn, path):
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if current > len(migrations):
                raise ConfigError(
                    f"{path}: registry schema version {current} is newer than this "
                    f"crucible-registry knows ({len(migrations)})",
                    hint="upgrade crucible-registry",
                )
            if current == len(migrations):
                return current
            for statement in migrations[current].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {current + 1}")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, path: Path) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise _translate(path, exc) from None
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise _translate(path, exc) from None

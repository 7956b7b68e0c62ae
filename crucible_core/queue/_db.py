"""SQLite plumbing shared by the scheduler and the lineage recorder.

One database file (``$CRUCIBLE_HOME/crucible.db``) in WAL mode: readers never
block the writer, and every write runs in ``BEGIN IMMEDIATE`` so two
processes never deadlock upgrading a read lock. Connections are per thread
(:class:`ConnectionPool`), because a ``sqlite3.Connection`` must not be used
by two threads at once.

fsync policy: ``PRAGMA synchronous=FULL`` by default, so a commit is on disk
before the call that made it returns (an acknowledged job survives a power
cut). ``CRUCIBLE_SYNC=normal`` trades that for speed: in WAL mode a commit
then survives a crash of the process but maybe not of the machine.

Every ``sqlite3`` error is turned into a :class:`~crucible_core.errors.CrucibleError`
that names the file and says what to do (:func:`translate`): a corrupt file
is a :class:`~crucible_core.errors.ConfigError` (exit 2), a lock held past the
busy timeout or a failed write is a runtime error (exit 1), and in both cases
nothing was committed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Literal

from crucible_core.errors import ConfigError, CrucibleError
from crucible_core.records.wal import use_wal

__all__ = [
    "DB_VERSION",
    "ConnectionPool",
    "SyncMode",
    "corrupt_error",
    "describe_problems",
    "quick_check",
    "sync_mode",
    "translate",
]

#: The layout of crucible.db (PRAGMA user_version); bumped when a table changes shape.
DB_VERSION = 4

SyncMode = Literal["full", "normal"]

_CORRUPT_MARKERS = ("not a database", "malformed", "file is encrypted", "corrupt")
_LOCK_MARKERS = ("database is locked", "database table is locked", "busy")


def sync_mode() -> SyncMode:
    """The fsync policy from ``CRUCIBLE_SYNC`` (``full``, the default, or ``normal``)."""
    raw = os.environ.get("CRUCIBLE_SYNC", "full").strip().lower() or "full"
    if raw not in ("full", "normal"):
        raise ConfigError(
            f"CRUCIBLE_SYNC={raw!r} is not a sync mode",
            hint="use CRUCIBLE_SYNC=full (fsync every commit) or normal (faster, WAL-safe)",
        )
    return "full" if raw == "full" else "normal"


def corrupt_error(path: Path, detail: str) -> ConfigError:
    """The error for a damaged database file: names it and the command that repairs it."""
    return ConfigError(
        f"{path}: the database is corrupt ({detail})",
        hint=f"stop every crucible worker and run `crucible jobs recover --db {path}`: it "
        "rebuilds the file from what is readable and keeps the damaged one beside it (if "
        f"nothing is readable, move the file aside: mv {path} {path}.bad)",
        path=str(path),
    )


def quick_check(conn: sqlite3.Connection, *, limit: int = 5) -> list[str]:
    """SQLite's ``PRAGMA quick_check``: the first ``limit`` problems, [] when the file is sound.

    It reads every page and checks that each index holds the same rows as
    its table (a damaged index page otherwise goes unnoticed: queries that
    use the index see wrong rows). Linear in the file size, so it is run when
    a worker starts and by ``crucible doctor``, not on every query.
    """
    rows = conn.execute(f"PRAGMA quick_check({int(limit)})").fetchall()
    lines = [line for r in rows for line in str(r[0]).splitlines()]
    problems = [line for line in lines if line != "ok" and not line.startswith("*** in database")]
    return problems[:limit]


def describe_problems(problems: list[str]) -> str:
    """``quick_check`` findings in one line: the first, and how many more."""
    more = len(problems) - 1
    return f"quick_check: {problems[0]}" + (f" (and {more} more)" if more > 0 else "")


def translate(exc: sqlite3.Error, path: Path, busy_timeout_s: float) -> CrucibleError:
    """A crucible error for a sqlite3 error on ``path``: what failed and what to do."""
    text = str(exc)
    low = text.lower()
    if any(m in low for m in _CORRUPT_MARKERS):
        return corrupt_error(path, text)
    if any(m in low for m in _LOCK_MARKERS):
        return CrucibleError(
            f"{path}: the database is locked by another process "
            f"(waited {busy_timeout_s:g} s); nothing was changed",
            hint="another crucible process is holding a write lock: wait for it to finish "
            "and try again; if none is running, check that the file is not on a network "
            "filesystem (SQLite WAL needs a local disk)",
            path=str(path),
        )
    if "unable to open" in low or "readonly" in low or "read-only" in low:
        return ConfigError(
            f"{path}: cannot open the database for writing ({text})",
            hint="check that the directory exists and is writable, or set CRUCIBLE_HOME "
            "to a writable directory",
            path=str(path),
        )
    return CrucibleError(
        f"{path}: database write failed ({text}); nothing was recorded",
        hint="check free disk space and permissions, then try again",
        path=str(path),
    )


class ConnectionPool:
    """One WAL-mode connection per thread to one database file.

    ``schema`` (``CREATE ... IF NOT EXISTS`` statements) is run when the
    table ``marker`` is missing, so opening an existing database needs no
    write lock.
    ``write()`` gives a connection inside ``BEGIN IMMEDIATE``; on any error
    the transaction is rolled back and the error translated, so a caller
    never acknowledges something that was not committed.
    """

    def __init__(
        self,
        path: Path,
        *,
        schema: str,
        marker: str,
        busy_timeout_s: float = 30.0,
        sync: SyncMode | None = None,
    ) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.sync: SyncMode = sync if sync is not None else sync_mode()
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._schema = schema
        self._busy_pragma = f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}"
        self._closed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{path.parent}: cannot create the state directory ({exc.strerror})",
                hint="set CRUCIBLE_HOME to a writable directory",
            ) from None
        with self.read() as conn:
            present = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (marker,)
            ).fetchone()
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if present is None:
            with self.write() as conn:
                _run_script(conn, self._schema)
                conn.execute(f"PRAGMA user_version = {DB_VERSION}")
        elif version != DB_VERSION:
            raise ConfigError(
                f"{path}: the database has layout {version}, this crucible reads layout "
                f"{DB_VERSION}",
                hint=f"it was written by another crucible version; move it aside "
                f"(mv {path} {path}.old) to start a fresh one, or use that version",
                path=str(path),
            )

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise translate(exc, self.path, self.busy_timeout_s) from None
        try:
            conn.execute(self._busy_pragma)
            use_wal(conn, timeout_s=self.busy_timeout_s)
            conn.execute(f"PRAGMA synchronous={self.sync.upper()}")
            conn.execute("PRAGMA foreign_keys=OFF")
        except sqlite3.Error as exc:
            conn.close()
            raise translate(exc, self.path, self.busy_timeout_s) from None
        return conn

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        if self._closed:
            raise CrucibleError(f"{self.path}: the database handle was closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def write(self) -> Generator[sqlite3.Connection]:
        """A connection inside ``BEGIN IMMEDIATE``; committed on success, else rolled back."""
        conn = self.conn()
        self._begin(conn)
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise translate(exc, self.path, self.busy_timeout_s) from None
            raise

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting for the write lock with short sleeps.

        SQLite's own busy handler sleeps 1, 2, 5, 10... ms between tries, so
        under contention a writer idles for milliseconds after the lock is
        free. For ``BEGIN`` the handler is switched off and the wait starts at
        50 us, doubling up to 2 ms, until ``busy_timeout_s``; other statements
        keep SQLite's handler.
        """
        conn.execute("PRAGMA busy_timeout = 0")
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.00005
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() >= deadline:
                        raise translate(exc, self.path, self.busy_timeout_s) from None
                except sqlite3.Error as exc:
                    raise translate(exc, self.path, self.busy_timeout_s) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.002)
        finally:
            conn.execute(self._busy_pragma)

    @contextlib.contextmanager
    def read(self) -> Generator[sqlite3.Connection]:
        """This thread's connection for reads; sqlite3 errors are translated."""
        conn = self.conn()
        try:
            yield conn
        except sqlite3.Error as exc:
            raise translate(exc, self.path, self.busy_timeout_s) from None

    def check(self) -> None:
        """Raise :func:`corrupt_error` if ``PRAGMA quick_check`` finds the file damaged."""
        with self.read() as conn:
            problems = quick_check(conn)
        if problems:
            raise corrupt_error(self.path, describe_problems(problems))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close every connection this pool opened (from any thread)."""
        with self._lock:
            conns, self._all = self._all, []
            self._closed = True
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT our BEGIN IMMEDIATE; run statements one by one.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)

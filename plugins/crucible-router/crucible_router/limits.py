"""Per-backend rate limits and concurrency caps, shared across threads and processes.

Why: a provider's quota (requests per second, tokens per minute, requests in
flight) belongs to the backend, not to one process: two ``crucible`` processes
on one machine must share it, or together they exceed it and both get throttled
by the provider. So the limiter's state lives in SQLite (the router's state
file, ``$CRUCIBLE_HOME/router.db`` by default), and every decision is one
``BEGIN IMMEDIATE`` transaction: read, refill, take, write. Without a file the
same code runs on a private in-memory database (one process only).

What is limited, per key (the member's name unless ``key`` is given):

- ``requests_per_s``: a token bucket of ``burst`` requests (default
  ``max(1, requests_per_s)``) refilled at that rate; each call takes one.
- ``tokens_per_min``: a bucket of ``tokens_per_min`` tokens refilled at
  ``tokens_per_min / 60`` per second. A call's size is not known before it
  answers, so a call is admitted while the bucket is above zero and its real
  usage (``Completion.usage``) is taken afterwards: the bucket may go into debt,
  and the next callers wait until it is paid back.
- ``max_in_flight``: at most this many calls running at once. Each running
  call is a row naming its process; rows of processes that died are removed
  when a caller finds the cap full, so a crash does not leak a slot.

A caller that cannot be admitted sleeps until it could be (polling every
``poll_s`` while waiting for a slot) for at most ``max_wait_s`` seconds, then
gets :class:`~crucible_core.errors.CapacityError` (retryable: the router moves
to the next member, the scheduler retries the job), with ``retry_after_s``
in its details. A wait that would end past the bound fails at once.

Clock: times stored in a shared file are compared across processes, so
``clock`` must be system-wide: ``time.monotonic`` (the default; one clock per
boot on Linux, macOS and Windows) or ``time.time``. Tests inject a fake clock
and ``sleep``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from crucible_core.errors import CapacityError, ConfigError
from crucible_core.records.wal import use_wal

__all__ = ["LimitStore", "Limits", "RateLimiter", "in_flight_by_key"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS limit_buckets (
  key TEXT PRIMARY KEY,
  level REAL NOT NULL,
  updated_at REAL NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS limit_slots (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL,
  pid INTEGER NOT NULL,
  since REAL NOT NULL
)""",
)


@dataclass(frozen=True)
class Limits:
    """One backend's limits (``None``: unlimited) and how long a caller may wait."""

    requests_per_s: float | None = None
    burst: float | None = None
    tokens_per_min: float | None = None
    max_in_flight: int | None = None
    max_wait_s: float = 5.0
    poll_s: float = 0.01
    key: str | None = None

    @classmethod
    def parse(cls, table: Mapping[str, Any], where: str) -> Limits:
        """From a ``limits`` table; ``ConfigError`` naming ``where`` and the bad key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown limit {unknown[0]!r}; expected one of {sorted(known)}"
            )
        try:
            limits = cls(**dict(table))
        except TypeError as exc:  # pragma: no cover - keys are checked above
            raise ConfigError(f"{where}: {exc}") from exc
        for name in ("requests_per_s", "burst", "tokens_per_min", "max_in_flight"):
            value = getattr(limits, name)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise ConfigError(f"{where}.{name} must be a number > 0, got {value!r}")
        if limits.max_in_flight is not None and limits.max_in_flight != int(limits.max_in_flight):
            raise ConfigError(f"{where}.max_in_flight must be a whole number")
        if not limits.max_wait_s >= 0 or not limits.poll_s > 0:
            raise ConfigError(
                f"{where}: need max_wait_s >= 0 and poll_s > 0, got {limits.max_wait_s}, "
                f"{limits.poll_s}"
            )
        return limits

    @property
    def active(self) -> bool:
        return any(
            v is not None for v in (self.requests_per_s, self.tokens_per_min, self.max_in_flight)
        )


class LimitStore:
    """The limiters' SQLite database: a file shared by processes, or private memory (``None``).

    One connection per store, used under a lock (threads of a process take turns;
    processes take turns on SQLite's write lock, waiting up to ``busy_timeout_s``).
    """

    def __init__(self, path: Path | str | None = None, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path if self.path is not None else ":memory:",
            timeout=busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        if self.path is not None:
            use_wal(self._conn, timeout_s=busy_timeout_s)
        for statement in _SCHEMA:
            self._conn.execute(statement)
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back when the body raises)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def in_flight_by_key(path: Path | str) -> dict[str, int]:
    """Calls running now per limit key in the state file at ``path``, counting only rows of
    live processes (what ``crucible backends status`` shows); empty without a file."""
    if not Path(path).exists():
        return {}
    store = LimitStore(path)
    try:
        with store.transaction() as conn:
            rows = conn.execute("SELECT key, pid FROM limit_slots").fetchall()
    finally:
        store.close()
    out: dict[str, int] = {}
    for key, pid in rows:
        if _alive(int(pid)):
            out[str(key)] = out.get(str(key), 0) + 1
    return out


class RateLimiter:
    """Admits calls to one backend within its :class:`Limits` (see the module docstring).

    ``acquire()`` returns a slot id (or raises ``CapacityError``); the caller ends
    each admitted call with ``release(slot, tokens=...)``, its real token usage.
    """

    def __init__(
        self,
        name: str,
        limits: Limits,
        store: LimitStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.key = limits.key or name
        self.limits = limits
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self._count_lock = threading.Lock()
        self.admitted = 0
        self.throttled = 0
        self.rejected = 0
        self.waited_s = 0.0

    # -- buckets (inside a transaction) ---------------------------------------------

    def _level(
        self, conn: sqlite3.Connection, bucket: str, rate: float, cap: float, now: float
    ) -> float:
        row = conn.execute(
            "SELECT level, updated_at FROM limit_buckets WHERE key = ?", (bucket,)
        ).fetchone()
        if row is None:
            return cap
        level, updated = float(row[0]), float(row[1])
        return min(cap, level + max(0.0, now - updated) * rate)

    @staticmethod
    def _store_level(conn: sqlite3.Connection, bucket: str, level: float, now: float) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO limit_buckets (key, level, updated_at) VALUES (?, ?, ?)",
            (bucket, level, now),
        )

    def _try(self, now: float) -> tuple[int | None, float, str]:
        """One admission attempt: (slot, 0, "") when admitted, else (None, wait_s, why)."""
        lim = self.limits
        with self._store.transaction() as conn:
            if lim.max_in_flight is not None:
                rows = conn.execute(
                    "SELECT id, pid FROM limit_slots WHERE key = ?", (self.key,)
                ).fetchall()
                if len(rows) >= lim.max_in_flight:
                    dead = [r[0] for r in rows if not _alive(int(r[1]))]
                    conn.executemany("DELETE FROM limit_slots WHERE id = ?", [(d,) for d in dead])
                    if len(rows) - len(dead) >= lim.max_in_flight:
                        return None, lim.poll_s, f"{lim.max_in_flight} calls in flight"
            req_level = 0.0
            if lim.requests_per_s is not None:
                cap = lim.burst or max(1.0, lim.requests_per_s)
                req_level = self._level(conn, f"{self.key}:requests", lim.requests_per_s, cap, now)
                if req_level < 1.0:
                    wait = (1.0 - req_level) / lim.requests_per_s
                    return None, wait, f"over {lim.requests_per_s:g} requests/s"
            if lim.tokens_per_min is not None:
                rate = lim.tokens_per_min / 60.0
                tok_level = self._level(conn, f"{self.key}:tokens", rate, lim.tokens_per_min, now)
                if tok_level <= 0.0:
                    wait = (1e-9 - tok_level) / rate
                    return None, wait, f"over {lim.tokens_per_min:g} tokens/min"
            if lim.requests_per_s is not None:
                self._store_level(conn, f"{self.key}:requests", req_level - 1.0, now)
            slot = 0
            if lim.max_in_flight is not None:
                cur = conn.execute(
                    "INSERT INTO limit_slots (key, pid, since) VALUES (?, ?, ?)",
                    (self.key, os.getpid(), now),
                )
                slot = int(cur.lastrowid or 0)
            return slot, 0.0, ""

    # -- the protocol -------------------------------------------------------------------

    def acquire(self) -> int:
        """Wait (at most ``max_wait_s``) until a call is admitted; its slot id.

        ``CapacityError`` (retryable) when it cannot be admitted in time; its
        details carry ``backend``, ``reason`` and ``retry_after_s``.
        """
        start = self._clock()
        waited = False
        while True:
            now = self._clock()
            slot, wait, why = self._try(now)
            if slot is not None:
                with self._count_lock:
                    self.admitted += 1
                    self.throttled += waited
                    self.waited_s += now - start
                return slot
            left = start + self.limits.max_wait_s - now
            if wait > left + 1e-9:
                with self._count_lock:
                    self.rejected += 1
                    self.waited_s += now - start
                raise CapacityError(
                    f"{self.name}: {why} (waited {now - start:.3g} s of max_wait_s "
                    f"{self.limits.max_wait_s:g})",
                    hint=f"raise {self.name}'s limits or max_wait_s, or add a fallback",
                    backend=self.name,
                    reason=why,
                    retry_after_s=wait,
                )
            waited = True
            self._sleep(wait)

    def release(self, slot: int, tokens: int = 0) -> None:
        """End an admitted call: free its in-flight slot and charge its ``tokens``."""
        lim = self.limits
        if lim.max_in_flight is None and (lim.tokens_per_min is None or tokens <= 0):
            return
        now = self._clock()
        with self._store.transaction() as conn:
            if lim.max_in_flight is not None:
                conn.execute("DELETE FROM limit_slots WHERE id = ?", (slot,))
            if lim.tokens_per_min is not None and tokens > 0:
                rate = lim.tokens_per_min / 60.0
                level = self._level(conn, f"{self.key}:tokens", rate, lim.tokens_per_min, now)
                self._store_level(conn, f"{self.key}:tokens", level - tokens, now)

    def in_flight(self) -> int:
        """Calls of this key running now, in every process sharing the store."""
        with self._store.transaction() as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM limit_slots WHERE key = ?", (self.key,)
            ).fetchone()
        return int(n)

    def metrics(self) -> dict[str, float]:
        with self._count_lock:
            return {
                "admitted": float(self.admitted),
                "throttled": float(self.throttled),
                "rejected": float(self.rejected),
                "waited_s": self.waited_s,
            }

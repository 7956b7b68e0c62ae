"""The ``jobs`` table: its schema, row codecs, and the single-row reads and status moves.

Every status change of a job goes through :func:`move` (the transition is
checked against :data:`crucible_core.ir.work.TRANSITIONS` and appended to
the row's history in the same statement); :class:`Tx` is one write
transaction with its clock reading. :mod:`crucible_core.queue.scheduler` is
the public API built on these; :mod:`crucible_core.queue.deps` the
dependency rules.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from crucible_core.errors import BackendError, ConfigError, Conflict, CrucibleError, NotFound
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.work import TERMINAL_STATUSES, Job, JobError, check_transition

__all__ = [
    "JOB_COLS",
    "SCHEMA",
    "JobTiming",
    "Lease",
    "Transition",
    "Tx",
    "attempts_of",
    "check_owner",
    "compact_spec",
    "count_running",
    "dependency_error",
    "enc",
    "encode_result",
    "epoch",
    "get_job",
    "history_decoder",
    "job_error",
    "move",
    "not_found",
    "ref_decoder",
    "row_job",
    "spec_of",
    "split_entry",
    "status_of",
    "ts",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    priority TEXT NOT NULL,
    status TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    idempotency_key TEXT,
    concurrency_key TEXT,
    max_concurrency INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    score REAL NOT NULL,
    available_at REAL NOT NULL,
    lease_owner TEXT,
    lease_expires REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    history TEXT NOT NULL DEFAULT '',
    spec BLOB NOT NULL,
    error BLOB,
    result BLOB,
    checkpoint BLOB,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs(tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs(score, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS jobs_running ON jobs(lease_expires) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs(seq) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS job_deps (
    job_id TEXT NOT NULL,
    dep_id TEXT NOT NULL,
    PRIMARY KEY (job_id, dep_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_deps_dep ON job_deps(dep_id);
CREATE TABLE IF NOT EXISTS limits (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    max_running INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID
"""

JOB_COLS = (
    "id, status, attempts, spec, error, result, created_at, updated_at, started_at, finished_at"
)
job_decoder = msgspec.json.Decoder(Job)
history_encoder = msgspec.json.Encoder()
history_decoder = msgspec.json.Decoder(tuple[str | None, str, float, str | None, str | None])
error_decoder = msgspec.json.Decoder(JobError)
ref_decoder = msgspec.json.Decoder(CheckpointRef)


@dataclass(frozen=True)
class Lease:
    """What a heartbeat answers: the new expiry and whether cancellation was requested."""

    job_id: str
    worker_id: str
    expires_at: float
    cancel_requested: bool


@dataclass(frozen=True)
class JobTiming:
    """A job's clock: earliest claim time (not_before, backoff) and its lease, if running."""

    available_at: float
    lease_owner: str | None
    lease_expires: float | None
    cancel_requested: bool


@dataclass(frozen=True)
class Transition:
    """One logged status move of a job (``from_status`` is None at submission)."""

    job_id: str
    from_status: str | None
    to_status: str
    at: float
    worker: str | None
    note: str | None


def job_error(exc: BaseException) -> JobError:
    """The :class:`JobError` recorded for ``exc`` (code, message, retryable, hint, details)."""
    if isinstance(exc, CrucibleError):
        retryable = isinstance(exc, BackendError) and exc.retryable
        details = exc.to_dict()
        for key in ("code", "message", "hint", "retryable"):
            details.pop(key, None)
        return JobError(
            code=exc.code,
            message=exc.message,
            retryable=retryable,
            hint=exc.hint,
            details=details,
        )
    if isinstance(exc, TimeoutError):
        return JobError(code="timeout", message=f"TimeoutError: {exc}", retryable=True)
    return JobError(
        code="unhandled_exception",
        message=f"{type(exc).__name__}: {exc}",
        hint="the job's code raised an exception that is not a Crucible error",
    )


def ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def epoch(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class Tx:
    """One write transaction: its connection and its clock reading."""

    __slots__ = ("conn", "now")

    def __init__(self, conn: sqlite3.Connection, now: float) -> None:
        self.conn = conn
        self.now = now

    def entry(self, frm: str | None, to: str, worker: str | None, note: str | None) -> str:
        """One line of a job's history (appended to its row, so logging costs no extra page)."""
        return history_encoder.encode([frm, to, self.now, worker, note]).decode() + "\n"


def get_job(conn: sqlite3.Connection, job_id: str) -> Job:
    """The job row ``job_id`` as a Job; NotFound if there is none."""
    row = conn.execute(f"SELECT {JOB_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise not_found(job_id)
    return row_job(row)


def spec_of(conn: sqlite3.Connection, job_id: str) -> Job:
    """The job as submitted (its stored spec)."""
    row = conn.execute("SELECT spec FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise not_found(job_id)
    return job_decoder.decode(row[0])


def status_of(conn: sqlite3.Connection, job_id: str) -> str:
    """The job's status; NotFound if there is no such job."""
    row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise not_found(job_id)
    return str(row[0])


def attempts_of(conn: sqlite3.Connection, job_id: str) -> int:
    """Attempts counted so far (0 for an unknown job)."""
    row = conn.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return int(row[0]) if row else 0


def check_owner(conn: sqlite3.Connection, job_id: str, worker_id: str | None) -> bool:
    """Raise unless ``job_id`` runs under ``worker_id``; return its cancel flag."""
    row = conn.execute(
        "SELECT status, lease_owner, cancel_requested FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    if row is None:
        raise not_found(job_id)
    status, owner, cancel = row
    if status != "running":
        raise Conflict(
            f"job {job_id!r} is {status}, not running",
            hint="its lease expired and it was requeued or ended; this attempt's "
            "outcome is discarded",
        )
    if worker_id is not None and owner != worker_id:
        raise Conflict(
            f"job {job_id!r} is leased to {owner!r}, not {worker_id!r}",
            hint="this worker's lease expired and another worker claimed the job",
        )
    return bool(cancel)


def move(
    tx: Tx,
    job_id: str,
    frm: str,
    to: str,
    *,
    worker: str | None = None,
    note: str | None = None,
    sets: Mapping[str, Any] | None = None,
) -> None:
    """The one status write: ``frm`` -> ``to`` (checked), logged, with ``sets`` columns.

    Conflict if the row is no longer ``frm`` (another writer moved it).
    """
    check_transition(frm, to)
    cols: dict[str, Any] = {"status": to, "updated_at": tx.now, **(sets or {})}
    if to in TERMINAL_STATUSES:
        cols.setdefault("finished_at", tx.now)
        cols["lease_owner"] = None
        cols["lease_expires"] = None
    assignments = ", ".join(f"{k} = ?" for k in cols)
    row = tx.conn.execute(
        f"UPDATE jobs SET {assignments}, history = history || ? WHERE id = ? AND status = ? "
        "RETURNING 1",
        (*cols.values(), tx.entry(frm, to, worker, note), job_id, frm),
    ).fetchone()
    if row is None:
        raise Conflict(f"job {job_id!r} is no longer {frm}; it changed meanwhile")


#: Fields the jobs table keeps in their own columns; the stored spec omits them.
RUNTIME_FIELDS: Final = frozenset(
    {
        "status",
        "attempts",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "error",
        "result",
    }
)
DEFAULT_JOB: Final = Job()
#: (attribute, JSON name, default) of every field the spec stores.
SPEC_FIELDS: Final = tuple(
    (f.name, f.encode_name, getattr(DEFAULT_JOB, f.name))
    for f in msgspec.structs.fields(Job)
    if f.name not in RUNTIME_FIELDS
)


def compact_spec(job: Job) -> bytes:
    """The submitted job as JSON without runtime fields or top-level defaults.

    Rows stay small (a few dozen bytes for a plain job instead of ~650), and
    each commit writes fewer pages; decoding fills the defaults back in.
    """
    return msgspec.json.encode(
        {
            key: value
            for name, key, default in SPEC_FIELDS
            if (value := getattr(job, name)) != default
        }
    )


def split_entry(tx: Tx, worker_id: str) -> tuple[str, str]:
    """A claim's history line around its attempt number (filled in by SQL)."""
    head, _, tail = tx.entry("queued", "running", worker_id, "attempt {n}").rpartition("{n}")
    return head, tail


def row_job(row: Sequence[Any]) -> Job:
    _id, status, attempts, spec, error, result, created, updated, started, finished = row
    job = job_decoder.decode(spec)
    return msgspec.structs.replace(
        job,
        status=status,
        attempts=attempts,
        error=None if error is None else error_decoder.decode(error),
        result=None if result is None else msgspec.json.decode(result),
        created_at=ts(created),
        updated_at=ts(updated),
        started_at=ts(started),
        finished_at=ts(finished),
    )


def count_running(conn: sqlite3.Connection, column: str, value: str) -> int:
    row = conn.execute(
        f"SELECT count(*) FROM jobs WHERE status = 'running' AND {column} = ?", (value,)
    ).fetchone()
    return int(row[0]) if row else 0


def encode_result(job_id: str, result: Any) -> bytes | None:
    if result is None:
        return None
    try:
        return msgspec.json.encode(result)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(
            f"job {job_id!r} returned a result that cannot be stored as JSON: {exc}",
            hint="return plain data (dicts, lists, strings, numbers) or IR values",
        ) from None


def not_found(job_id: str) -> NotFound:
    return NotFound(f"no job with id {job_id!r}", hint="`crucible jobs list` shows the known jobs")


def enc(value: Any) -> bytes:
    return msgspec.json.encode(value)


def dependency_error(root: str, status: str, via: str | None) -> JobError:
    return JobError(
        code="dependency_failed",
        message=f"dependency {root!r} ended {status}" + (f" (via {via!r})" if via else ""),
        hint=f"see `crucible jobs show {root}`; retry it, then retry this job",
        details={"dependency": root},
    )

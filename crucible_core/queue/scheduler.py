"""The durable work queue: Work IR jobs in SQLite, claimed by workers under a lease.

Contract (what the server, the registry, the harness and executors rely on):

- :meth:`Scheduler.enqueue` / :meth:`~Scheduler.enqueue_many` commit the job
  before returning it: a returned job is acknowledged and survives a crash
  (fsync policy in :mod:`crucible_core.queue._db`); an exception means
  nothing was recorded. A job whose ``idempotency_key`` (per tenant) was seen
  before is not enqueued again: the existing job is returned. ``depends_on``
  must name existing jobs or jobs of the same batch; a cycle is refused with a
  :class:`~crucible_core.errors.ConfigError` naming it (``a -> b -> a``).
- **Order.** Among claimable jobs the one with the lowest *score* runs first,
  ``score = ready_time + rank(priority) * aging_s`` (rank: realtime 0,
  interactive 1, batch 2, offline 3; ``aging_s`` defaults to 60 s), ties in
  submission order. So priorities are strict between jobs that became ready
  within ``aging_s`` of each other, FIFO within a priority, and a waiting job
  gains one priority level per ``aging_s``: an offline job is never passed by
  work that became ready more than ``3 * aging_s`` after it, so it cannot
  starve. ``ready_time`` is the submission time, or the time its dependencies
  all succeeded, or the time of an explicit retry.
- **Leases.** :meth:`~Scheduler.claim` moves a job to ``running`` for
  ``worker_id`` until ``now + lease_s`` and counts an attempt;
  :meth:`~Scheduler.heartbeat` extends the lease and reports a cancellation
  request. A lease that expires (the worker died) puts the job back in the
  queue at once; the attempt stays counted, and past ``max_attempts`` the job
  is ``dead``. Execution is therefore at-least-once; the state machine of
  :data:`crucible_core.ir.work.TRANSITIONS` is enforced on every move and
  every move is logged (:meth:`~Scheduler.history`), so a job reaches exactly
  one terminal state until someone retries it explicitly.
- **Failures.** :meth:`~Scheduler.fail` classifies the error: retryable when it
  is a ``BackendError`` with ``retryable=True``, a ``TimeoutError``, or its
  code is in the job's ``RetryPolicy.retryable_errors`` (``timeout``,
  ``capacity``... by default). A retryable failure waits
  :func:`~crucible_core.ir.work.next_delay` then runs again; after
  ``max_attempts`` attempts the job is ``dead``. Anything else is ``failed``
  at once. ``BudgetExhausted`` ends ``budget_exhausted``, ``Cancelled`` ends
  ``cancelled``. :meth:`~Scheduler.retry` requeues a terminal job.
- **Constraints.** ``depends_on``: the job is ``pending`` until every
  dependency succeeded; a dependency that ends any other way fails it
  (code ``dependency_failed``), transitively. ``not_before``: not claimed
  earlier. ``concurrency_key``: at most ``max_concurrency`` (default 1)
  running jobs share a key. Per tenant: :meth:`~Scheduler.set_tenant_limit`.
  ``timeout_s`` is enforced by the worker, which fails the job with a
  retryable timeout.
- **Cancel.** A pending or queued job is ``cancelled`` at once; a running job
  is flagged, its worker sees the flag on its next heartbeat and signals the
  handler, and the job ends ``cancelled`` whatever the handler then does.
- **Recovery.** :meth:`~Scheduler.record_checkpoint` stores a running job's
  last ``CheckpointRef``; :meth:`~Scheduler.last_checkpoint` gives it to the
  next claimant, which resumes from it.

Unknown ids raise :class:`~crucible_core.errors.NotFound`; an illegal move
raises :class:`~crucible_core.errors.Conflict`; database trouble raises an
error naming the file (:func:`crucible_core.queue._db.translate`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, Final, get_args

import msgspec

from crucible_core._options import check_count, check_seconds
from crucible_core.errors import (
    ConfigError,
    Conflict,
    NotFound,
)
from crucible_core.ids import ID_HINT, is_valid_id, new_id, shown
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.work import (
    PRIORITY_RANK,
    TERMINAL_STATUSES,
    Job,
    JobError,
    JobStatus,
    next_delay,
)
from crucible_core.pipeline.dag import find_cycle, topological_order
from crucible_core.queue._db import ConnectionPool, SyncMode
from crucible_core.queue.deps import dep_statuses, end, release_dependents_of
from crucible_core.queue.leases import claim_next, expire
from crucible_core.queue.rows import (
    JOB_COLS,
    SCHEMA,
    JobTiming,
    Lease,
    Transition,
    Tx,
    attempts_of,
    check_owner,
    compact_spec,
    dependency_error,
    enc,
    encode_result,
    epoch,
    get_job,
    history_decoder,
    job_error,
    move,
    not_found,
    ref_decoder,
    row_job,
    spec_of,
    status_of,
    ts,
)
from crucible_core.records.paths import db_path as default_db_path

__all__ = [
    "DEFAULT_AGING_S",
    "DEFAULT_LEASE_S",
    "JobTiming",
    "Lease",
    "Scheduler",
    "Transition",
    "job_error",
]

DEFAULT_AGING_S: Final = 60.0
DEFAULT_LEASE_S: Final = 30.0
#: Terminal statuses other than success: a dependency ending in one fails its dependents.
FAILED_STATUSES: Final = frozenset(TERMINAL_STATUSES - {"succeeded"})
_STATUSES: Final[tuple[str, ...]] = get_args(JobStatus)


class Scheduler:
    """The durable job queue in ``db_path`` (default ``$CRUCIBLE_HOME/crucible.db``).

    ``clock`` returns wall-clock seconds (``time.time`` by default); inject
    one to test leases and backoff without sleeping. Safe to share between
    threads (one SQLite connection per thread) and between processes (SQLite
    locking). See the module docstring for the full contract.
    """

    #: How often (s) a worker finishing a job also sweeps expired leases.
    EXPIRE_SWEEP_S: Final = 1.0
    #: How long (s) tenant limits are cached between claims.
    LIMITS_TTL_S: Final = 1.0

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        clock: Callable[[], float] | None = None,
        aging_s: float = DEFAULT_AGING_S,
        busy_timeout_s: float = 30.0,
        sync: SyncMode | None = None,
    ) -> None:
        aging_s = check_seconds("aging_s", aging_s)
        busy_timeout_s = check_seconds("busy_timeout_s", busy_timeout_s, allow_zero=True)
        self.path = Path(db_path) if db_path is not None else default_db_path()
        self.aging_s = aging_s
        self._clock = clock or time.time
        self._db = ConnectionPool(
            self.path, schema=SCHEMA, marker="limits", busy_timeout_s=busy_timeout_s, sync=sync
        )
        self._next_sweep = 0.0
        self._limits: tuple[float, dict[str, int]] = (float("-inf"), {})

    # -- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        """Close the database connections (the scheduler is unusable afterwards)."""
        self._db.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._db.closed

    def check(self) -> None:
        """Check the database file (``PRAGMA quick_check``); ConfigError naming it if damaged.

        Reads the whole file, so it is for start-up (the worker) and
        ``crucible doctor``; the error's hint is the recovery command.
        """
        self._db.check()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self) -> float:
        """The scheduler's clock (wall seconds)."""
        return self._clock()

    @contextlib.contextmanager
    def _write(self) -> Generator[Tx]:
        with self._db.write() as conn:
            yield Tx(conn, self._clock())

    # -- submission -----------------------------------------------------------

    def enqueue(self, job: Job) -> Job:
        """Persist ``job`` and return it as stored (id assigned, status pending or queued)."""
        return self.enqueue_many([job])[0]

    def enqueue_many(self, jobs: Sequence[Job]) -> list[Job]:
        """Persist a batch atomically; jobs may depend on one another (by ``id``)."""
        prepared: list[Job] = []
        seen: set[str] = set()
        for job in jobs:
            job_id = job.id
            while not job_id or (not job.id and job_id in seen):
                job_id = new_id("job", now=self._clock())  # a fresh id, never one of this batch's
            if not is_valid_id(job_id):
                raise ConfigError(
                    f"job id {shown(job_id)} is not allowed",
                    hint=f"{ID_HINT}; or leave `id` empty to get one",
                )
            if job_id in seen:
                raise ConfigError(f"job id {job_id!r} appears twice in one submission")
            seen.add(job_id)
            prepared.append(job if job.id else msgspec.structs.replace(job, id=job_id))
        if any(j.constraints.depends_on for j in prepared):
            depends_on = {j.id: list(j.constraints.depends_on) for j in prepared}
            cycle = find_cycle(depends_on)
            if cycle is not None:
                raise ConfigError(
                    f"depends_on forms a cycle: {' -> '.join(cycle)}",
                    hint="a job cannot wait for itself; remove one of these dependencies",
                    cycle=cycle,
                )
            by_id = {j.id: j for j in prepared}
            order = [by_id[i] for i in topological_order(list(by_id), depends_on)]
        else:
            order = prepared
        out: dict[str, Job] = {}
        renamed: dict[str, str] = {}
        with self._write() as tx:
            for job in order:
                deps = [renamed.get(d, d) for d in job.constraints.depends_on]
                stored = self._insert(tx, job, deps)
                if stored.id != job.id:
                    renamed[job.id] = stored.id
                out[job.id] = stored
        return [out[j.id] for j in prepared]

    def _insert(self, tx: Tx, job: Job, deps: list[str]) -> Job:
        conn, now = tx.conn, tx.now
        if job.idempotency_key is not None:
            row = conn.execute(
                f"SELECT {JOB_COLS} FROM jobs WHERE tenant_id = ? AND idempotency_key = ?",
                (job.tenant_id, job.idempotency_key),
            ).fetchone()
            if row is not None:
                return row_job(row)
        dep_status: dict[str, str] = {}
        for dep in deps:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (dep,)).fetchone()
            if row is None:
                raise NotFound(
                    f"job {job.id!r} depends on {dep!r}, which is not a known job",
                    hint="submit the dependency first, or in the same file",
                )
            dep_status[dep] = str(row[0])
        c = job.constraints
        status = "queued" if all(s == "succeeded" for s in dep_status.values()) else "pending"
        spec = msgspec.structs.replace(
            job,
            status=status,
            attempts=0,
            created_at=ts(now),
            updated_at=ts(now),
            started_at=None,
            finished_at=None,
            error=None,
            result=None,
        )
        max_concurrency = c.max_concurrency
        if c.concurrency_key is not None and max_concurrency is None:
            max_concurrency = 1
        try:
            conn.execute(
                "INSERT INTO jobs (id, kind, priority, status, tenant_id, idempotency_key, "
                "concurrency_key, max_concurrency, max_attempts, score, available_at, history, "
                "spec, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.kind,
                    job.priority,
                    status,
                    job.tenant_id,
                    job.idempotency_key,
                    c.concurrency_key,
                    max_concurrency,
                    c.retry_policy.max_attempts,
                    self._score(job.priority, now),
                    epoch(c.not_before) if c.not_before is not None else now,
                    tx.entry(None, status, None, "submitted"),
                    compact_spec(job),
                    now,
                    now,
                ),
            )
        except sqlite3.IntegrityError:
            raise Conflict(
                f"a job with id {job.id!r} already exists",
                hint="leave `id` empty to get a fresh one, or set `idempotency_key` to make "
                "resubmission safe",
            ) from None
        if deps:
            conn.executemany(
                "INSERT OR IGNORE INTO job_deps (job_id, dep_id) VALUES (?, ?)",
                [(job.id, d) for d in deps],
            )
            failed = next((d for d, s in dep_status.items() if s in FAILED_STATUSES), None)
            if failed is not None:
                error = dependency_error(failed, dep_status[failed], None)
                move(tx, job.id, status, "failed", note=error.message, sets={"error": enc(error)})
                return get_job(conn, job.id)
        return spec

    def _score(self, priority: str, ready_at: float) -> float:
        return ready_at + PRIORITY_RANK[priority] * self.aging_s

    # -- claiming -------------------------------------------------------------

    def claim(self, worker_id: str, lease_s: float = DEFAULT_LEASE_S) -> Job | None:
        """The next runnable job, now ``running`` under ``worker_id``'s lease; None if idle.

        Expired leases are reclaimed first, so any claiming worker recovers
        the jobs of a dead one. An idle queue is detected with a read, so
        polling workers do not contend for the write lock.
        """
        lease_s = check_seconds("lease_s", lease_s)
        if not self._maybe_work(self._clock()):
            return None
        with self._write() as tx:
            self._expire(tx)
            return self._claim(tx, worker_id, lease_s)

    def complete_and_claim(
        self,
        job_id: str,
        result: Any = None,
        *,
        worker_id: str,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> Job | None:
        """:meth:`complete` then :meth:`claim` in one transaction (one commit, one fsync)."""
        lease_s = check_seconds("lease_s", lease_s)
        payload = encode_result(job_id, result)
        with self._write() as tx:
            self._finish_ok(tx, job_id, payload, worker_id)
            if tx.now >= self._next_sweep:
                self._expire(tx)
            return self._claim(tx, worker_id, lease_s)

    def _maybe_work(self, now: float) -> bool:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'queued' AND available_at <= ?)"
                " OR EXISTS (SELECT 1 FROM jobs WHERE status = 'running' "
                "AND (lease_expires IS NULL OR lease_expires < ?))",
                (now, now),
            ).fetchone()
        return bool(row and row[0])

    def _tenant_limits(self, conn: sqlite3.Connection, now: float) -> dict[str, int]:
        at, limits = self._limits
        if now - at < self.LIMITS_TTL_S:
            return limits
        limits = {
            str(k): int(v)
            for k, v in conn.execute("SELECT key, max_running FROM limits WHERE scope = 'tenant'")
        }
        self._limits = (now, limits)
        return limits

    def _claim(self, tx: Tx, worker_id: str, lease_s: float) -> Job | None:
        return claim_next(tx, worker_id, lease_s, self._tenant_limits(tx.conn, tx.now), self.path)

    def expire_leases(self) -> list[str]:
        """Requeue (or kill, past max_attempts) running jobs whose lease expired; their ids."""
        with self._write() as tx:
            return self._expire(tx)

    def _expire(self, tx: Tx) -> list[str]:
        self._next_sweep = tx.now + self.EXPIRE_SWEEP_S
        return expire(tx)

    def heartbeat(self, job_id: str, *, worker_id: str, lease_s: float = DEFAULT_LEASE_S) -> Lease:
        """Extend ``worker_id``'s lease on a running job; Conflict if the lease was lost."""
        lease_s = check_seconds("lease_s", lease_s)
        with self._write() as tx:
            row = tx.conn.execute(
                "UPDATE jobs SET lease_expires = ? WHERE id = ? AND status = 'running' "
                "AND lease_owner = ? RETURNING cancel_requested",
                (tx.now + lease_s, job_id, worker_id),
            ).fetchone()
            if row is None:
                check_owner(tx.conn, job_id, worker_id)  # says why
                raise Conflict(f"job {job_id!r} changed while its lease was being renewed")
        return Lease(job_id, worker_id, tx.now + lease_s, bool(row[0]))

    def release(self, job_id: str, *, worker_id: str) -> Job:
        """Give a running job back to the queue without counting the attempt (worker drain)."""
        with self._write() as tx:
            cancel = check_owner(tx.conn, job_id, worker_id)
            if cancel:
                end(tx, job_id, "running", "cancelled", worker=worker_id)
            else:
                move(
                    tx,
                    job_id,
                    "running",
                    "queued",
                    worker=worker_id,
                    note="released by a draining worker",
                    sets={
                        "attempts": max(0, attempts_of(tx.conn, job_id) - 1),
                        "available_at": tx.now,
                        "lease_owner": None,
                        "lease_expires": None,
                    },
                )
            return get_job(tx.conn, job_id)

    # -- finishing ------------------------------------------------------------

    def complete(self, job_id: str, result: Any = None, *, worker_id: str | None = None) -> Job:
        """Record success (``cancelled`` instead if cancellation was requested meanwhile)."""
        payload = encode_result(job_id, result)
        with self._write() as tx:
            self._finish_ok(tx, job_id, payload, worker_id)
            return get_job(tx.conn, job_id)

    def _finish_ok(self, tx: Tx, job_id: str, payload: bytes | None, worker_id: str | None) -> None:
        now = tx.now
        done = tx.conn.execute(
            "UPDATE jobs SET status = 'succeeded', result = ?, error = NULL, updated_at = ?, "
            "finished_at = ?, lease_owner = NULL, lease_expires = NULL, history = history || ? "
            "WHERE id = ? "
            "AND status = 'running' AND cancel_requested = 0 "
            "AND (? IS NULL OR lease_owner = ?) RETURNING 1",
            (
                payload,
                now,
                now,
                tx.entry("running", "succeeded", worker_id, None),
                job_id,
                worker_id,
                worker_id,
            ),
        ).fetchone()
        if done is not None:
            release_dependents_of(tx, job_id, self._score)
            return
        # Slow path: say why (not running, other owner), or honour a cancel request.
        check_owner(tx.conn, job_id, worker_id)
        end(
            tx,
            job_id,
            "running",
            "cancelled",
            worker=worker_id,
            note="cancelled while running",
            sets={"result": payload},
        )

    def fail(
        self, job_id: str, error: BaseException | JobError, *, worker_id: str | None = None
    ) -> Job:
        """Record a failed attempt: retry later, or end failed/dead/cancelled/budget_exhausted.

        Returns the job as it now stands (``queued`` when a retry is scheduled).
        """
        err = error if isinstance(error, JobError) else job_error(error)
        with self._write() as tx:
            conn, now = tx.conn, tx.now
            cancel = check_owner(conn, job_id, worker_id)
            attempts = attempts_of(conn, job_id)
            policy = spec_of(conn, job_id).constraints.retry_policy
            retryable = err.retryable or err.code in policy.retryable_errors
            sets: dict[str, Any] = {"error": enc(err)}
            note = f"{err.code} on attempt {attempts}"
            if cancel or err.code == "cancelled":
                end(tx, job_id, "running", "cancelled", worker=worker_id, note=note, sets=sets)
            elif err.code == "budget_exhausted":
                end(
                    tx,
                    job_id,
                    "running",
                    "budget_exhausted",
                    worker=worker_id,
                    note=note,
                    sets=sets,
                )
            elif not retryable:
                end(tx, job_id, "running", "failed", worker=worker_id, note=note, sets=sets)
            elif attempts >= policy.max_attempts:
                end(
                    tx,
                    job_id,
                    "running",
                    "dead",
                    worker=worker_id,
                    note=note + f" (max_attempts {policy.max_attempts} reached)",
                    sets=sets,
                )
            else:
                delay_s = next_delay(policy, attempts) / 1000.0
                sets.update(available_at=now + delay_s, lease_owner=None, lease_expires=None)
                move(
                    tx,
                    job_id,
                    "running",
                    "queued",
                    worker=worker_id,
                    note=note + f"; retry in {delay_s:g} s",
                    sets=sets,
                )
            return get_job(conn, job_id)

    # -- cancel and retry -----------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: at once if it waits, cooperatively (flagged) if it runs.

        Cancelling a cancelled job is a no-op; a job that already ended
        otherwise is a Conflict.
        """
        with self._write() as tx:
            status = status_of(tx.conn, job_id)
            if status in ("pending", "queued"):
                end(tx, job_id, status, "cancelled", note="cancelled by request")
            elif status == "running":
                tx.conn.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ?, "
                    "history = history || ? WHERE id = ?",
                    (tx.now, tx.entry("running", "running", None, "cancel requested"), job_id),
                )
            elif status != "cancelled":
                raise Conflict(
                    f"job {job_id!r} already ended {status}; there is nothing to cancel",
                    hint=f"`crucible jobs show {job_id}` shows how it ended",
                )
            return get_job(tx.conn, job_id)

    def cancel_requested(self, job_id: str) -> bool:
        """Whether cancellation of ``job_id`` was requested (or it is already cancelled)."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT cancel_requested, status FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        if row is None:
            raise not_found(job_id)
        return bool(row[0]) or row[1] == "cancelled"

    def retry(self, job_id: str) -> Job:
        """Requeue a failed, dead, cancelled or budget_exhausted job, with a fresh attempt count."""
        with self._write() as tx:
            conn, now = tx.conn, tx.now
            status = status_of(conn, job_id)
            if status not in FAILED_STATUSES:
                raise Conflict(
                    f"job {job_id!r} is {status}; only failed, dead, cancelled or "
                    "budget_exhausted jobs can be retried",
                    hint="`crucible jobs cancel ID` stops a job that is waiting or running",
                )
            deps = dep_statuses(conn, job_id)
            broken = next(((d, s) for d, s in deps.items() if s in FAILED_STATUSES), None)
            if broken is not None:
                raise Conflict(
                    f"job {job_id!r} depends on {broken[0]!r}, which ended {broken[1]}",
                    hint=f"retry the dependency first: crucible jobs retry {broken[0]}",
                )
            priority = str(
                conn.execute("SELECT priority FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            )
            move(
                tx,
                job_id,
                status,
                "queued",
                note="retried by request",
                sets={
                    "attempts": 0,
                    "error": None,
                    "result": None,
                    "cancel_requested": 0,
                    "available_at": now,
                    "score": self._score(priority, now),
                    "finished_at": None,
                    "started_at": None,
                },
            )
            if any(s != "succeeded" for s in deps.values()):
                move(tx, job_id, "queued", "pending", note="waiting for dependencies")
            return get_job(conn, job_id)

    # -- checkpoints ----------------------------------------------------------

    def record_checkpoint(self, job_id: str, ref: CheckpointRef) -> None:
        """Remember ``ref`` as the job's last checkpoint (recovery resumes from it)."""
        with self._write() as tx:
            cur = tx.conn.execute(
                "UPDATE jobs SET checkpoint = ?, updated_at = ? WHERE id = ?",
                (msgspec.json.encode(ref), tx.now, job_id),
            )
            if cur.rowcount != 1:
                raise not_found(job_id)

    def last_checkpoint(self, job_id: str) -> CheckpointRef | None:
        """The job's last recorded checkpoint, or None."""
        with self._db.read() as conn:
            row = conn.execute("SELECT checkpoint FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise not_found(job_id)
        return None if row[0] is None else ref_decoder.decode(row[0])

    # -- limits ---------------------------------------------------------------

    def set_tenant_limit(self, tenant_id: str, max_running: int | None) -> None:
        """At most ``max_running`` jobs of ``tenant_id`` run at once (None removes the limit).

        Claims in other processes see a change within :attr:`LIMITS_TTL_S`.
        """
        if max_running is not None and max_running < 1:
            raise ConfigError(f"a tenant limit must be >= 1, got {max_running}")
        with self._write() as tx:
            if max_running is None:
                tx.conn.execute(
                    "DELETE FROM limits WHERE scope = 'tenant' AND key = ?", (tenant_id,)
                )
            else:
                tx.conn.execute(
                    "INSERT OR REPLACE INTO limits (scope, key, max_running) "
                    "VALUES ('tenant', ?, ?)",
                    (tenant_id, max_running),
                )
        self._limits = (float("-inf"), {})

    # -- reading --------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job as it now stands; NotFound if there is no such job."""
        with self._db.read() as conn:
            return get_job(conn, job_id)

    def get_with_checkpoint(self, job_id: str) -> tuple[Job, CheckpointRef | None]:
        """:meth:`get` and :meth:`last_checkpoint` in one read (a status page needs both)."""
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT {JOB_COLS}, checkpoint FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        if row is None:
            raise not_found(job_id)
        ref = row[-1]
        return row_job(row[:-1]), None if ref is None else ref_decoder.decode(ref)

    def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        tenant_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs in submission order, optionally filtered."""
        if status is not None and status not in _STATUSES:
            raise ConfigError(
                f"{status!r} is not a job status", hint=f"statuses: {', '.join(_STATUSES)}"
            )
        if limit is not None:
            check_count("limit", limit, minimum=0)  # SQLite reads LIMIT -1 as "no limit"
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("status", status), ("kind", kind), ("tenant_id", tenant_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {JOB_COLS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._db.read() as conn:
            return [row_job(r) for r in conn.execute(sql, params).fetchall()]

    def unfinished(self) -> bool:
        """Whether any job is pending, queued or running (indexed: cheap on a big table)."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'queued') "
                "OR EXISTS (SELECT 1 FROM jobs WHERE status = 'running') "
                "OR EXISTS (SELECT 1 FROM jobs WHERE status = 'pending')"
            ).fetchone()
        return bool(row and row[0])

    def counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        with self._db.read() as conn:
            return {
                str(s): int(n)
                for s, n in conn.execute("SELECT status, count(*) FROM jobs GROUP BY status")
            }

    def history(self, job_id: str) -> list[Transition]:
        """Every logged status move of ``job_id``, oldest first."""
        with self._db.read() as conn:
            row = conn.execute("SELECT history FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise not_found(job_id)
        return [
            Transition(job_id, *history_decoder.decode(line)) for line in str(row[0]).splitlines()
        ]

    def timing(self, job_id: str) -> JobTiming:
        """When the job may next be claimed, and who holds its lease until when."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT available_at, lease_owner, lease_expires, cancel_requested FROM jobs "
                "WHERE id = ?",
                (job_id,),
            ).fetchone()
        if row is None:
            raise not_found(job_id)
        return JobTiming(float(row[0]), row[1], row[2], bool(row[3]))

"""Leases: which queued job a worker gets (:func:`claim_next`) and what happens to jobs
whose worker stopped renewing its lease (:func:`expire`). The scheduler calls both
inside its write transactions; the rules are in its module docstring."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from crucible_core.ir.work import Job, JobError
from crucible_core.queue._db import corrupt_error
from crucible_core.queue.deps import end
from crucible_core.queue.rows import JOB_COLS, Tx, count_running, enc, move, row_job, split_entry

__all__ = ["claim_next", "expire"]


def claim_next(
    tx: Tx, worker_id: str, lease_s: float, tenant_limits: Mapping[str, int], db: Path
) -> Job | None:
    """Lease the best claimable job to ``worker_id``: lowest score first, skipping jobs whose
    concurrency key or tenant is at its limit. None when nothing can run now."""
    conn, now = tx.conn, tx.now
    running_by_key: dict[str, int] = {}
    running_by_tenant: dict[str, int] = {}
    chosen: tuple[int, str] | None = None
    cur = conn.execute(
        "SELECT seq, id, tenant_id, concurrency_key, max_concurrency FROM jobs "
        "WHERE status = 'queued' AND available_at <= ? ORDER BY score, seq",
        (now,),
    )
    try:
        for seq, job_id, tenant, key, max_conc in cur:
            if key is not None:
                if key not in running_by_key:
                    running_by_key[key] = count_running(conn, "concurrency_key", key)
                if running_by_key[key] >= (max_conc or 1):
                    continue
            limit = tenant_limits.get(tenant)
            if limit is not None:
                if tenant not in running_by_tenant:
                    running_by_tenant[tenant] = count_running(conn, "tenant_id", tenant)
                if running_by_tenant[tenant] >= limit:
                    continue
            chosen = (int(seq), str(job_id))
            break
    finally:
        cur.close()
    if chosen is None:
        return None
    seq, job_id = chosen
    row = conn.execute(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = ?, "
        "lease_expires = ?, started_at = ?, updated_at = ?, "
        "history = history || ? || (attempts + 1) || ? "
        f"WHERE seq = ? AND status = 'queued' RETURNING {JOB_COLS}",
        (worker_id, now + lease_s, now, now, *split_entry(tx, worker_id), seq),
    ).fetchone()
    if row is None:
        # The queued index listed a row the table says is not queued: a damaged file.
        raise corrupt_error(db, f"index jobs_queued lists job {job_id!r}, which is not queued")
    return row_job(row)


def expire(tx: Tx) -> list[str]:
    """Requeue (or end ``dead``/``cancelled``) running jobs whose lease expired; their ids."""
    conn, now = tx.conn, tx.now
    rows = conn.execute(
        "SELECT id, attempts, max_attempts, cancel_requested, lease_owner FROM jobs "
        "WHERE status = 'running' AND (lease_expires IS NULL OR lease_expires < ?)",
        (now,),
    ).fetchall()
    expired: list[str] = []
    for job_id, attempts, max_attempts, cancel_requested, owner in rows:
        expired.append(str(job_id))
        error = JobError(
            code="lease_expired",
            message=f"worker {owner!r} stopped renewing its lease on attempt "
            f"{attempts} of {max_attempts} (it died, hung or lost the database)",
            retryable=True,
            hint="`crucible jobs show ID` lists the job's attempts",
        )
        note = f"lease of {owner} expired"
        if cancel_requested:
            end(tx, job_id, "running", "cancelled", note=note)
        elif attempts >= max_attempts:
            end(tx, job_id, "running", "dead", note=note, sets={"error": enc(error)})
        else:
            move(
                tx,
                job_id,
                "running",
                "queued",
                note=note,
                sets={
                    "error": enc(error),
                    "available_at": now,
                    "lease_owner": None,
                    "lease_expires": None,
                },
            )
    return expired

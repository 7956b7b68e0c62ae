"""The checks every route runs first: the caller's scope, and that a job is the caller's.

Shared by the API (:mod:`crucible_server.app`) and the dashboard's data
routes (:mod:`crucible_server.dashboard.routes`), so both refuse the same way:
a missing scope is 403; another tenant's job is 404, as if it did not exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

from crucible_core.errors import NotFound, TooLarge
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.work import Job
from crucible_server.auth import Principal, RateLimiter, authenticate
from crucible_server.tokens import TokenStore

__all__ = ["authorize", "owned_job", "owned_job_and_checkpoint", "requires", "too_large"]


def authorize(
    authorization: str | None, scope: str, tokens: TokenStore | None, limiter: RateLimiter | None
) -> Principal:
    """The caller of an ``Authorization`` header, who must hold ``scope`` (401/403/429 if not)."""
    p = authenticate(authorization, tokens, limiter)
    p.require(scope)
    return p


def requires(
    scope: str, tokens: TokenStore | None, limiter: RateLimiter | None
) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the request's :class:`Principal`, which must hold ``scope``.

    A coroutine on purpose: the check (a hash and one indexed SQLite read, a few µs)
    runs on the event loop. As a plain function FastAPI would run it in the thread
    pool, and the hop there and back, not the check, cost most of a request
    (docs/benchmarks.md: GET /v1/jobs/{id} went from 0.3x to ~1x of a minimal endpoint).
    """

    async def dependency(request: Request) -> Principal:
        return authorize(request.headers.get("authorization"), scope, tokens, limiter)

    dependency.__name__ = f"require_{scope.replace(':', '_')}"
    return dependency


def owned_job(scheduler: Any, job_id: str, p: Principal, *, hint: str) -> Job:
    """Job ``job_id`` if it is ``p``'s tenant's; NotFound (with ``hint``) otherwise."""
    return owned_job_and_checkpoint(scheduler, job_id, p, hint=hint, checkpoint=False)[0]


def owned_job_and_checkpoint(
    scheduler: Any, job_id: str, p: Principal, *, hint: str, checkpoint: bool = True
) -> tuple[Job, CheckpointRef | None]:
    """:func:`owned_job` with the job's last recorded checkpoint, read together."""
    try:
        if checkpoint:
            job, ref = scheduler.get_with_checkpoint(job_id)
        else:
            job, ref = scheduler.get(job_id), None
    except NotFound:
        job = ref = None
    if job is None or job.tenant_id != p.tenant_id:
        raise NotFound(f"no job {job_id!r}", hint=hint) from None
    return job, ref


def too_large(limit: int) -> TooLarge:
    """The refusal of a request body over ``limit`` bytes (413)."""
    return TooLarge(
        f"the request body is larger than {limit} bytes",
        hint="send a smaller document",
        limit=limit,
    )

"""The checks every route runs first: the caller's scope, and that a job is the caller's.

Shared by the API (:mod:`crucible_server.app`) and the dashboard's data
routes (:mod:`crucible_server.dashboard.routes`), so both refuse the same way:
a missing scope is 403; another tenant's job is 404, as if it did not exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

from crucible_core.errors import NotFound
from crucible_core.ir.work import Job
from crucible_server.auth import Principal, RateLimiter, authenticate
from crucible_server.tokens import TokenStore

__all__ = ["owned_job", "requires"]


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
        p = authenticate(request.headers.get("authorization"), tokens, limiter)
        p.require(scope)
        return p

    dependency.__name__ = f"require_{scope.replace(':', '_')}"
    return dependency


def owned_job(scheduler: Any, job_id: str, p: Principal, *, hint: str) -> Job:
    """Job ``job_id`` if it is ``p``'s tenant's; NotFound (with ``hint``) otherwise."""
    missing = NotFound(f"no job {job_id!r}", hint=hint)
    try:
        job: Job = scheduler.get(job_id)
    except NotFound:
        raise missing from None
    if job.tenant_id != p.tenant_id:
        raise missing
    return job

"""Work IR: a schedulable job, its retry policy and its status state machine.

Two pure functions live beside the types because every scheduler needs them
and they must agree everywhere: :func:`next_delay` (the backoff before retry
``attempt``) and :func:`check_transition` (the allowed status moves).
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any, Final, Literal

from msgspec import field

from crucible_core.errors import Conflict
from crucible_core.ir.base import (
    SCHEMA_VERSION,
    IRStruct,
    NonNegativeInt,
    Params,
    PositiveFloat,
    PositiveInt,
    SchemaVersion,
    UnitInterval,
)
from crucible_core.ir.common import ResourceSpec

__all__ = [
    "PRIORITY_RANK",
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "Constraints",
    "Job",
    "JobError",
    "JobKind",
    "JobStatus",
    "Priority",
    "Resources",
    "RetryPolicy",
    "can_transition",
    "check_transition",
    "next_delay",
]

JobKind = Literal[
    "training_run", "training_step", "inference", "evaluation", "experiment_step", "custom"
]
Priority = Literal["realtime", "interactive", "batch", "offline"]
JobStatus = Literal[
    "pending",
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "dead",
    "budget_exhausted",
]
Resources = ResourceSpec

#: Lower rank runs first.
PRIORITY_RANK: Final[dict[str, int]] = {
    "realtime": 0,
    "interactive": 1,
    "batch": 2,
    "offline": 3,
}

TERMINAL_STATUSES: Final[frozenset[str]] = frozenset(
    {"succeeded", "failed", "cancelled", "dead", "budget_exhausted"}
)

#: The status state machine. ``pending`` waits for dependencies or
#: ``not_before``; ``queued`` may be claimed; ``running`` goes back to
#: ``queued`` on a retryable failure or an expired lease. Terminal states
#: move only through an explicit retry (back to ``queued``).
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "pending": frozenset({"queued", "cancelled", "failed"}),
    "queued": frozenset({"running", "cancelled", "failed", "pending"}),
    "running": frozenset(
        {"succeeded", "failed", "cancelled", "dead", "queued", "budget_exhausted"}
    ),
    "succeeded": frozenset(),
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
    "dead": frozenset({"queued"}),
    "budget_exhausted": frozenset({"queued"}),
}


def can_transition(current: str, target: str) -> bool:
    """Whether a job may move from ``current`` to ``target``."""
    return target in TRANSITIONS.get(current, frozenset())


def check_transition(current: str, target: str) -> None:
    """Raise :class:`~crucible_core.errors.Conflict` unless the move is allowed."""
    if not can_transition(current, target):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, frozenset()))) or "none"
        raise Conflict(
            f"a job cannot go from {current!r} to {target!r}",
            hint=f"from {current!r} it may go to: {allowed}",
        )


class RetryPolicy(IRStruct, frozen=True, kw_only=True):
    """How often and how patiently to retry a job that failed retryably.

    ``jitter`` is the fraction of each delay that is randomised: 0 gives the
    exact schedule, 0.2 spreads each delay over [0.8 d, d].
    """

    max_attempts: PositiveInt = 3
    backoff: Literal["exponential", "linear", "constant"] = "exponential"
    initial_delay_ms: NonNegativeInt = 1000
    max_delay_ms: NonNegativeInt = 60_000
    jitter: UnitInterval = 0.0
    retryable_errors: list[str] = field(
        default_factory=lambda: ["timeout", "backend_unavailable", "capacity"]
    )

    def __post_init__(self) -> None:
        if self.max_delay_ms < self.initial_delay_ms:
            raise ValueError(
                f"max_delay_ms ({self.max_delay_ms}) must be >= initial_delay_ms "
                f"({self.initial_delay_ms})"
            )


def next_delay(policy: RetryPolicy, attempt: int, *, rng: random.Random | None = None) -> float:
    """Milliseconds to wait before retry number ``attempt`` (1 = the first retry).

    exponential: ``initial * 2**(attempt-1)``; linear: ``initial * attempt``;
    constant: ``initial``; always capped at ``max_delay_ms``. With jitter
    ``j`` the result lies in ``[(1-j) * d, d]``; pass ``rng`` to make it
    reproducible. Never negative, never above the cap.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    base = float(policy.initial_delay_ms)
    cap = float(policy.max_delay_ms)
    if policy.backoff == "exponential":
        # Avoid computing huge powers: past 2**63 the cap has long been hit.
        delay = cap if attempt > 64 else min(cap, base * (2.0 ** (attempt - 1)))
    elif policy.backoff == "linear":
        delay = min(cap, base * attempt)
    else:
        delay = min(cap, base)
    if policy.jitter > 0:
        r = (rng or random).random()
        delay -= delay * policy.jitter * r
    return delay


class Constraints(IRStruct, frozen=True, kw_only=True):
    """When and how a job may run."""

    retry_policy: RetryPolicy = RetryPolicy()
    depends_on: list[str] = []
    timeout_s: PositiveFloat | None = None
    concurrency_key: str | None = None
    max_concurrency: PositiveInt | None = None
    not_before: datetime | None = None


class JobError(IRStruct, frozen=True, kw_only=True):
    """Why a job failed: the error's stable code, its message and whether it was retryable."""

    code: str
    message: str
    retryable: bool = False
    hint: str | None = None
    details: Params = {}


class Job(IRStruct, frozen=True, kw_only=True):
    """A schedulable unit of work. The top-level Work IR message."""

    schema_version: SchemaVersion = SCHEMA_VERSION
    id: str = ""
    kind: JobKind = "custom"
    priority: Priority = "batch"
    status: JobStatus = "pending"
    payload: Any = None
    resources: ResourceSpec = ResourceSpec()
    constraints: Constraints = Constraints()
    tenant_id: str = "default"
    idempotency_key: str | None = None
    attempts: NonNegativeInt = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | None = None
    result: Any = None
    metadata: Params = {}

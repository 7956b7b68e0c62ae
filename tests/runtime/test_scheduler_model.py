"""The scheduler against a model of the queue (hypothesis RuleBasedStateMachine).

Every rule runs on a real SQLite scheduler and on a plain-Python model of
the documented contract (order by score then submission, leases, retry
backoff, max_attempts, cancel, dependency propagation, explicit retry); after
each step every job's status and attempt count must agree, and the
transition log must never show a second terminal state without a retry.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from crucible_core.errors import CapacityError, Conflict
from crucible_core.ir.work import (
    PRIORITY_RANK,
    TERMINAL_STATUSES,
    Constraints,
    Job,
    RetryPolicy,
    next_delay,
)
from crucible_core.queue.scheduler import Scheduler

from .conftest import FakeClock

LEASE = 5.0
FAILED = TERMINAL_STATUSES - {"succeeded"}
WORKERS = st.sampled_from(["w1", "w2"])
#: Mostly act on a running job as its owner (the interesting path); sometimes as a stranger.
OWN = st.sampled_from([True, True, True, False])


@dataclass
class M:
    """The model of one job."""

    seq: int
    priority: str
    policy: RetryPolicy
    deps: list[str]
    status: str = "queued"
    attempts: int = 0
    score: float = 0.0
    available_at: float = 0.0
    owner: str | None = None
    lease_expires: float | None = None
    cancel: bool = False
    terminal_moves: int = 0
    retries: int = 0


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="crucible-model-"))
        self.clock = FakeClock()
        self.sched = Scheduler(self.dir / "crucible.db", clock=self.clock, sync="normal")
        self.jobs: dict[str, M] = {}

    def teardown(self) -> None:
        self.sched.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- model helpers ---------------------------------------------------------

    def _score(self, m: M) -> float:
        return self.clock.now + PRIORITY_RANK[m.priority] * self.sched.aging_s

    def _end(self, job_id: str, status: str) -> None:
        m = self.jobs[job_id]
        m.status, m.owner, m.lease_expires = status, None, None
        m.terminal_moves += 1
        if status in FAILED:
            for other_id, other in self.jobs.items():
                if other.status == "pending" and job_id in other.deps:
                    self._end(other_id, "failed")

    def _succeed(self, job_id: str) -> None:
        self._end(job_id, "succeeded")
        for other in self.jobs.values():
            if other.status == "pending" and all(
                self.jobs[d].status == "succeeded" for d in other.deps
            ):
                other.status = "queued"
                other.score = self._score(other)

    def _expire(self) -> None:
        now = self.clock.now
        for job_id, m in sorted(self.jobs.items(), key=lambda kv: kv[1].seq):
            if m.status == "running" and m.lease_expires is not None and m.lease_expires < now:
                if m.cancel:
                    self._end(job_id, "cancelled")
                elif m.attempts >= m.policy.max_attempts:
                    self._end(job_id, "dead")
                else:
                    m.status, m.owner, m.lease_expires = "queued", None, None
                    m.available_at = now

    def _target(self, pick: int, worker: str, own: bool) -> tuple[str, str]:
        """A job and a worker: with ``own``, a running job and its owner (when there is one)."""
        running = sorted(j for j, m in self.jobs.items() if m.status == "running")
        if own and running:
            job_id = running[pick % len(running)]
            return job_id, self.jobs[job_id].owner or worker
        return sorted(self.jobs)[pick % len(self.jobs)], worker

    def _owned(self, job_id: str, worker: str) -> bool:
        m = self.jobs[job_id]
        return m.status == "running" and m.owner == worker

    # -- rules -----------------------------------------------------------------

    @initialize(priorities=st.lists(st.sampled_from(list(PRIORITY_RANK)), min_size=1, max_size=3))
    def seed_jobs(self, priorities: list[str]) -> None:
        for priority in priorities:
            self.enqueue(priority=priority, max_attempts=2, dep_picks=[])

    @rule(
        priority=st.sampled_from(list(PRIORITY_RANK)),
        max_attempts=st.integers(1, 3),
        dep_picks=st.lists(st.integers(0, 50), max_size=2, unique=True),
    )
    def enqueue(self, priority: str, max_attempts: int, dep_picks: list[int]) -> None:
        existing = sorted(self.jobs, key=lambda j: self.jobs[j].seq)
        deps = sorted({existing[i % len(existing)] for i in dep_picks}) if existing else []
        job_id = f"j{len(self.jobs)}"
        policy = RetryPolicy(max_attempts=max_attempts, initial_delay_ms=1000)
        stored = self.sched.enqueue(
            Job(
                id=job_id,
                priority=priority,  # type: ignore[arg-type]
                constraints=Constraints(retry_policy=policy, depends_on=deps),
            )
        )
        m = M(seq=len(self.jobs), priority=priority, policy=policy, deps=deps)
        m.score = self._score(m)
        m.available_at = self.clock.now
        self.jobs[job_id] = m
        statuses = [self.jobs[d].status for d in deps]
        if any(s in FAILED for s in statuses):
            m.status = "failed"
            m.terminal_moves = 1
        elif all(s == "succeeded" for s in statuses):
            m.status = "queued"
        else:
            m.status = "pending"
        assert stored.status == m.status

    @rule(worker=WORKERS)
    def claim(self, worker: str) -> None:
        got = self.sched.claim(worker, lease_s=LEASE)
        self._expire()
        now = self.clock.now
        ready = [
            (m.score, m.seq, job_id)
            for job_id, m in self.jobs.items()
            if m.status == "queued" and m.available_at <= now
        ]
        if not ready:
            assert got is None
            return
        _, _, expected = min(ready)
        assert got is not None
        assert got.id == expected
        m = self.jobs[expected]
        m.status, m.owner, m.lease_expires = "running", worker, now + LEASE
        m.attempts += 1
        assert got.attempts == m.attempts

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 50), worker=WORKERS, own=OWN)
    def heartbeat(self, pick: int, worker: str, own: bool) -> None:
        job_id, worker = self._target(pick, worker, own)
        if self._owned(job_id, worker):
            lease = self.sched.heartbeat(job_id, worker_id=worker, lease_s=LEASE)
            m = self.jobs[job_id]
            m.lease_expires = self.clock.now + LEASE
            assert lease.cancel_requested == m.cancel
        else:
            try:
                self.sched.heartbeat(job_id, worker_id=worker, lease_s=LEASE)
            except Conflict:
                return
            raise AssertionError("heartbeat without the lease was accepted")

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 50), worker=WORKERS, own=OWN)
    def complete(self, pick: int, worker: str, own: bool) -> None:
        job_id, worker = self._target(pick, worker, own)
        if not self._owned(job_id, worker):
            try:
                self.sched.complete(job_id, worker_id=worker)
            except Conflict:
                return
            raise AssertionError("completion without the lease was accepted")
        done = self.sched.complete(job_id, {"ok": True}, worker_id=worker)
        if self.jobs[job_id].cancel:
            self._end(job_id, "cancelled")
        else:
            self._succeed(job_id)
        assert done.status == self.jobs[job_id].status

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 50), worker=WORKERS, own=OWN, retryable=st.booleans())
    def fail(self, pick: int, worker: str, own: bool, retryable: bool) -> None:
        job_id, worker = self._target(pick, worker, own)
        error = CapacityError("busy") if retryable else ValueError("bad")
        if not self._owned(job_id, worker):
            try:
                self.sched.fail(job_id, error, worker_id=worker)
            except Conflict:
                return
            raise AssertionError("failure without the lease was accepted")
        after = self.sched.fail(job_id, error, worker_id=worker)
        m = self.jobs[job_id]
        if m.cancel:
            self._end(job_id, "cancelled")
        elif not retryable:
            self._end(job_id, "failed")
        elif m.attempts >= m.policy.max_attempts:
            self._end(job_id, "dead")
        else:
            m.status, m.owner, m.lease_expires = "queued", None, None
            m.available_at = self.clock.now + next_delay(m.policy, m.attempts) / 1000
        assert after.status == m.status

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 50))
    def cancel(self, pick: int) -> None:
        job_id = sorted(self.jobs)[pick % len(self.jobs)]
        m = self.jobs[job_id]
        if m.status in ("succeeded", "failed", "dead", "budget_exhausted"):
            try:
                self.sched.cancel(job_id)
            except Conflict:
                return
            raise AssertionError("a finished job was cancelled")
        self.sched.cancel(job_id)
        if m.status in ("pending", "queued"):
            self._end(job_id, "cancelled")
        elif m.status == "running":
            m.cancel = True

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 50))
    def retry(self, pick: int) -> None:
        job_id = sorted(self.jobs)[pick % len(self.jobs)]
        m = self.jobs[job_id]
        blocked = any(self.jobs[d].status in FAILED for d in m.deps)
        if m.status not in FAILED or blocked:
            try:
                self.sched.retry(job_id)
            except Conflict:
                return
            raise AssertionError(f"retry of a {m.status} job was accepted")
        self.sched.retry(job_id)
        m.retries += 1
        m.terminal_moves = 0
        m.attempts, m.cancel = 0, False
        m.available_at = self.clock.now
        m.score = self._score(m)
        m.status = (
            "queued" if all(self.jobs[d].status == "succeeded" for d in m.deps) else "pending"
        )

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 6.0, 0.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def expire(self) -> None:
        self.sched.expire_leases()
        self._expire()

    # -- invariants --------------------------------------------------------------

    @invariant()
    def agrees_with_model(self) -> None:
        real = {j.id: (j.status, j.attempts) for j in self.sched.list()}
        model = {job_id: (m.status, m.attempts) for job_id, m in self.jobs.items()}
        assert real == model

    @invariant()
    def clocks_agree_with_model(self) -> None:
        for job_id, m in self.jobs.items():
            timing = self.sched.timing(job_id)
            if m.status == "queued":
                assert timing.available_at == m.available_at
            if m.status == "running":
                assert (timing.lease_owner, timing.lease_expires) == (m.owner, m.lease_expires)
                assert timing.cancel_requested == m.cancel

    @invariant()
    def at_most_one_terminal_state_per_run(self) -> None:
        for job_id, m in self.jobs.items():
            moves = self.sched.history(job_id)
            since_retry: list[str] = []
            for t in moves:
                if t.note == "retried by request":
                    since_retry = []
                elif t.to_status in TERMINAL_STATUSES:
                    since_retry.append(t.to_status)
            assert len(since_retry) == m.terminal_moves <= 1
            if since_retry:
                assert since_retry[0] == m.status


QueueMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
test_queue_matches_model = QueueMachine.TestCase

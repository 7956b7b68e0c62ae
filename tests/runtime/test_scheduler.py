"""The durable scheduler against a real SQLite file, with an injected clock."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crucible_core.errors import (
    BackendError,
    BudgetExhausted,
    CapacityError,
    ConfigError,
    Conflict,
    CrucibleError,
    DeadlineExceeded,
    NotFound,
    exit_code_for,
)
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.work import TERMINAL_STATUSES, Constraints, Job, RetryPolicy
from crucible_core.queue.scheduler import Scheduler

from .conftest import FakeClock


def job(id: str = "", **kw: object) -> Job:
    constraints = kw.pop("constraints", None) or Constraints()
    return Job(id=id, constraints=constraints, **kw)  # type: ignore[arg-type]


def deps(*names: str, **kw: object) -> Constraints:
    return Constraints(depends_on=list(names), **kw)  # type: ignore[arg-type]


def run_one(sched: Scheduler, worker: str = "w") -> Job:
    claimed = sched.claim(worker)
    assert claimed is not None
    return claimed


# -- submission --------------------------------------------------------------


def test_enqueue_assigns_id_and_persists_across_instances(
    sched: Scheduler, db_file: Path, clock: FakeClock
) -> None:
    stored = sched.enqueue(job(payload={"x": 1}))
    assert stored.id.startswith("job-")
    assert stored.status == "queued"
    assert stored.created_at == datetime.fromtimestamp(clock.now, UTC)
    other = Scheduler(db_file, clock=clock)
    try:
        again = other.get(stored.id)
    finally:
        other.close()
    assert again.payload == {"x": 1}
    assert again.status == "queued"


def test_idempotency_key_dedupes_per_tenant(sched: Scheduler) -> None:
    a = sched.enqueue(job(idempotency_key="k1", payload=1))
    b = sched.enqueue(job(idempotency_key="k1", payload=2))
    c = sched.enqueue(job(idempotency_key="k1", tenant_id="other", payload=3))
    assert a.id == b.id
    assert b.payload == 1
    assert c.id != a.id
    assert len(sched.list()) == 2


def test_duplicate_explicit_id_is_a_conflict(sched: Scheduler) -> None:
    sched.enqueue(job("same"))
    with pytest.raises(Conflict, match="'same' already exists"):
        sched.enqueue(job("same"))


def test_unsafe_id_is_refused(sched: Scheduler) -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        sched.enqueue(job("../etc"))


def test_cycle_is_refused_naming_it(sched: Scheduler) -> None:
    batch = [
        job("a", constraints=deps("c")),
        job("b", constraints=deps("a")),
        job("c", constraints=deps("b")),
    ]
    with pytest.raises(ConfigError) as info:
        sched.enqueue_many(batch)
    assert "cycle" in info.value.message
    assert info.value.message.endswith("a -> c -> b -> a")
    assert exit_code_for(info.value) == 2
    assert sched.list() == []


def test_self_dependency_is_a_cycle(sched: Scheduler) -> None:
    with pytest.raises(ConfigError, match="x -> x"):
        sched.enqueue(job("x", constraints=deps("x")))


def test_unknown_dependency_is_not_found(sched: Scheduler) -> None:
    with pytest.raises(NotFound, match="'ghost'"):
        sched.enqueue(job("a", constraints=deps("ghost")))
    assert sched.list() == []


def test_batch_is_atomic(sched: Scheduler) -> None:
    sched.enqueue(job("taken"))
    with pytest.raises(Conflict):
        sched.enqueue_many([job("fresh"), job("taken")])
    assert [j.id for j in sched.list()] == ["taken"]


# -- order -------------------------------------------------------------------


def test_priority_then_fifo(sched: Scheduler, clock: FakeClock) -> None:
    for name, prio in [
        ("o1", "offline"),
        ("b1", "batch"),
        ("r1", "realtime"),
        ("b2", "batch"),
        ("i1", "interactive"),
        ("r2", "realtime"),
    ]:
        sched.enqueue(job(name, priority=prio))
        clock.advance(0.001)
    order = [run_one(sched).id for _ in range(6)]
    assert order == ["r1", "r2", "i1", "b1", "b2", "o1"]


def test_aging_lets_offline_work_pass_later_realtime_work(
    sched: Scheduler, clock: FakeClock
) -> None:
    sched.enqueue(job("old-offline", priority="offline"))
    clock.advance(3 * sched.aging_s - 1)
    sched.enqueue(job("rt-early", priority="realtime"))
    clock.advance(2)
    sched.enqueue(job("rt-late", priority="realtime"))
    order = [run_one(sched).id for _ in range(3)]
    assert order == ["rt-early", "old-offline", "rt-late"]


def test_not_before_is_honoured(sched: Scheduler, clock: FakeClock) -> None:
    later = datetime.fromtimestamp(clock.now + 10, UTC)
    sched.enqueue(job("later", constraints=Constraints(not_before=later)))
    assert sched.claim("w") is None
    clock.advance(10)
    assert run_one(sched).id == "later"


# -- leases ------------------------------------------------------------------


def test_claim_complete_records_result(sched: Scheduler) -> None:
    sched.enqueue(job("a"))
    claimed = run_one(sched)
    assert (claimed.status, claimed.attempts) == ("running", 1)
    done = sched.complete("a", {"answer": 42}, worker_id="w")
    assert done.status == "succeeded"
    assert done.result == {"answer": 42}
    assert sched.claim("w") is None
    assert [(t.from_status, t.to_status) for t in sched.history("a")] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]


def test_complete_and_claim_is_one_step(sched: Scheduler) -> None:
    sched.enqueue_many([job("a"), job("b")])
    run_one(sched)
    nxt = sched.complete_and_claim("a", None, worker_id="w")
    assert nxt is not None
    assert nxt.id == "b"
    assert sched.get("a").status == "succeeded"
    assert sched.complete_and_claim("b", None, worker_id="w") is None


def test_expired_lease_requeues_and_counts_the_attempt(sched: Scheduler, clock: FakeClock) -> None:
    sched.enqueue(job("a"))
    sched.claim("dead-worker", lease_s=5)
    clock.advance(4)
    assert sched.claim("other") is None
    clock.advance(2)
    again = sched.claim("other")
    assert again is not None
    assert again.id == "a"
    assert again.attempts == 2
    assert again.error is not None
    assert again.error.code == "lease_expired"
    with pytest.raises(Conflict, match="leased to 'other'"):
        sched.complete("a", worker_id="dead-worker")
    assert sched.complete("a", worker_id="other").status == "succeeded"


def test_generated_ids_of_one_batch_never_collide(
    sched: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids made in one second differ only by their random part.

    With 24 random bits a batch of 2000 collided about one time in eight
    ("appears twice in one submission"). The repeat is forced here by
    replacing the random source (a collision cannot be caused on demand).
    """
    from crucible_core import ids as module

    draws = iter(["aaaaaaaaaa", "aaaaaaaaaa", "bbbbbbbbbb"])
    monkeypatch.setattr(module, "_random_hex", lambda n: next(draws))
    first, second = sched.enqueue_many([job(), job()])
    assert first.id != second.id
    assert {first.id[-10:], second.id[-10:]} == {"aaaaaaaaaa", "bbbbbbbbbb"}


def test_a_big_batch_gets_distinct_ids(sched: Scheduler) -> None:
    stored = sched.enqueue_many([job() for _ in range(5000)])
    assert len({j.id for j in stored}) == 5000


@pytest.mark.parametrize("finish", ["complete", "complete_and_claim"])
def test_success_after_an_expired_lease_clears_the_error(
    sched: Scheduler, clock: FakeClock, finish: str
) -> None:
    """A succeeded job used to keep ``error: lease_expired`` from an earlier attempt."""
    sched.enqueue(job("a"))
    sched.claim("dead-worker", lease_s=5)
    clock.advance(6)
    again = sched.claim("other", lease_s=5)
    assert again is not None
    assert again.error is not None
    assert again.error.code == "lease_expired"  # shown while the retry runs
    if finish == "complete":
        sched.complete("a", {"ok": 1}, worker_id="other")
    else:
        assert sched.complete_and_claim("a", {"ok": 1}, worker_id="other") is None
    done = sched.get("a")
    assert (done.status, done.error, done.result) == ("succeeded", None, {"ok": 1})
    assert sched.list(status="succeeded")[0].error is None


def test_running_job_without_a_lease_expiry_is_reclaimed(
    sched: Scheduler, clock: FakeClock, db_file: Path
) -> None:
    """A NaN lease was stored as NULL, and such a job stayed ``running`` forever.

    The row is written by hand: the API now refuses a NaN lease, so this is
    the state an older version left behind.
    """
    sched.enqueue(job("a"))
    sched.claim("w", lease_s=5)
    raw = sqlite3.connect(db_file, isolation_level=None)
    raw.execute("UPDATE jobs SET lease_expires = NULL WHERE id = 'a'")
    raw.close()
    assert sched.expire_leases() == ["a"]
    again = sched.claim("other", lease_s=5)
    assert again is not None
    assert (again.id, again.attempts) == ("a", 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0])
def test_lease_must_be_finite_and_positive(sched: Scheduler, bad: float) -> None:
    sched.enqueue(job("a"))
    for call in (
        lambda: sched.claim("w", lease_s=bad),
        lambda: sched.heartbeat("a", worker_id="w", lease_s=bad),
        lambda: sched.complete_and_claim("a", worker_id="w", lease_s=bad),
    ):
        with pytest.raises(ConfigError, match="lease_s must be a finite number of seconds > 0"):
            call()
    assert sched.get("a").status == "queued"


@pytest.mark.parametrize("option", ["aging_s", "busy_timeout_s"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_scheduler_options_reject_nan_inf_negative(db_file: Path, option: str, bad: float) -> None:
    with pytest.raises(ConfigError, match=f"^{option} must be a finite number") as info:
        Scheduler(db_file, **{option: bad})  # type: ignore[arg-type]
    assert exit_code_for(info.value) == 2


def test_expired_lease_past_max_attempts_is_dead(sched: Scheduler, clock: FakeClock) -> None:
    policy = RetryPolicy(max_attempts=2)
    sched.enqueue(job("a", constraints=Constraints(retry_policy=policy)))
    for _ in range(2):
        assert sched.claim("w", lease_s=1) is not None
        clock.advance(2)
    assert sched.expire_leases() == ["a"]
    assert sched.get("a").status == "dead"


def test_heartbeat_extends_lease(sched: Scheduler, clock: FakeClock) -> None:
    sched.enqueue(job("a"))
    sched.claim("w", lease_s=5)
    for _ in range(5):
        clock.advance(4)
        lease = sched.heartbeat("a", worker_id="w", lease_s=5)
        assert lease.expires_at == clock.now + 5
        assert not lease.cancel_requested
    assert sched.expire_leases() == []
    with pytest.raises(Conflict):
        sched.heartbeat("a", worker_id="intruder")


def test_release_does_not_count_the_attempt(sched: Scheduler) -> None:
    sched.enqueue(job("a"))
    run_one(sched)
    released = sched.release("a", worker_id="w")
    assert (released.status, released.attempts) == ("queued", 0)
    assert run_one(sched).attempts == 1


# -- failures and retries ----------------------------------------------------


def test_retryable_failures_wait_the_backoff_then_die(sched: Scheduler, clock: FakeClock) -> None:
    policy = RetryPolicy(max_attempts=3, backoff="exponential", initial_delay_ms=1000)
    sched.enqueue(job("a", constraints=Constraints(retry_policy=policy)))
    run_one(sched)
    assert sched.fail("a", CapacityError("busy"), worker_id="w").status == "queued"
    clock.advance(0.999)
    assert sched.claim("w") is None
    clock.advance(0.002)
    run_one(sched)
    assert sched.fail("a", DeadlineExceeded("slow"), worker_id="w").status == "queued"
    clock.advance(1.999)
    assert sched.claim("w") is None
    clock.advance(0.002)
    assert run_one(sched).attempts == 3
    dead = sched.fail("a", BackendError("flaky", retryable=True), worker_id="w")
    assert dead.status == "dead"
    assert dead.error is not None
    assert dead.error.message == "flaky"
    assert sched.claim("w") is None


def test_non_retryable_failure_fails_at_once(sched: Scheduler) -> None:
    sched.enqueue(job("a"))
    run_one(sched)
    failed = sched.fail("a", ValueError("bad input"), worker_id="w")
    assert failed.status == "failed"
    assert failed.attempts == 1
    assert failed.error is not None
    assert failed.error.message == "ValueError: bad input"
    assert not failed.error.retryable


def test_error_codes_in_policy_are_retryable(sched: Scheduler) -> None:
    policy = RetryPolicy(retryable_errors=["config_error"], initial_delay_ms=0)
    sched.enqueue(job("a", constraints=Constraints(retry_policy=policy)))
    run_one(sched)
    assert sched.fail("a", ConfigError("try again"), worker_id="w").status == "queued"


def test_budget_exhausted_and_cancelled_errors_end_so(sched: Scheduler) -> None:
    sched.enqueue_many([job("a"), job("b")])
    run_one(sched)
    assert sched.fail("a", BudgetExhausted("max_cost"), worker_id="w").status == (
        "budget_exhausted"
    )
    run_one(sched)
    from crucible_core.errors import Cancelled

    assert sched.fail("b", Cancelled("stop"), worker_id="w").status == "cancelled"


def test_retry_requeues_a_dead_job_with_fresh_attempts(sched: Scheduler) -> None:
    sched.enqueue(job("a", constraints=Constraints(retry_policy=RetryPolicy(max_attempts=1))))
    run_one(sched)
    assert sched.fail("a", CapacityError("x"), worker_id="w").status == "dead"
    retried = sched.retry("a")
    assert (retried.status, retried.attempts, retried.error) == ("queued", 0, None)
    assert run_one(sched).attempts == 1
    with pytest.raises(Conflict, match="only failed"):
        sched.retry("a")


def test_result_that_is_not_json_is_refused(sched: Scheduler) -> None:
    sched.enqueue(job("a"))
    run_one(sched)
    with pytest.raises(ConfigError, match="cannot be stored as JSON"):
        sched.complete("a", object(), worker_id="w")
    assert sched.get("a").status == "running"


# -- dependencies ------------------------------------------------------------


def test_dependents_wait_then_run(sched: Scheduler) -> None:
    sched.enqueue_many([job("child", constraints=deps("parent")), job("parent")])
    assert sched.get("child").status == "pending"
    assert run_one(sched).id == "parent"
    assert sched.claim("w") is None
    sched.complete("parent", worker_id="w")
    assert sched.get("child").status == "queued"
    assert run_one(sched).id == "child"


def test_dependency_failure_propagates_transitively(sched: Scheduler) -> None:
    sched.enqueue(job("root"))
    sched.enqueue(job("mid", constraints=deps("root")))
    sched.enqueue(job("leaf", constraints=deps("mid")))
    sched.enqueue(job("other"))
    run_one(sched)
    sched.fail("root", ValueError("boom"), worker_id="w")
    for name in ("mid", "leaf"):
        failed = sched.get(name)
        assert failed.status == "failed"
        assert failed.error is not None
        assert failed.error.code == "dependency_failed"
        assert failed.error.details == {"dependency": "root"}
    assert "via 'mid'" in (sched.get("leaf").error.message)  # type: ignore[union-attr]
    assert sched.get("other").status == "queued"


def test_enqueue_after_dependency_failed_fails_at_once(sched: Scheduler) -> None:
    sched.enqueue(job("root"))
    sched.cancel("root")
    late = sched.enqueue(job("late", constraints=deps("root")))
    assert late.status == "failed"
    assert late.error is not None
    assert late.error.code == "dependency_failed"


def test_retry_of_dependent_needs_its_dependency_first(sched: Scheduler) -> None:
    sched.enqueue(job("root"))
    sched.enqueue(job("child", constraints=deps("root")))
    run_one(sched)
    sched.fail("root", ValueError("x"), worker_id="w")
    with pytest.raises(Conflict, match="retry the dependency first"):
        sched.retry("child")
    sched.retry("root")
    assert sched.retry("child").status == "pending"
    run_one(sched)
    sched.complete("root", worker_id="w")
    assert run_one(sched).id == "child"


# -- cancel ------------------------------------------------------------------


def test_cancel_pending_is_immediate(sched: Scheduler) -> None:
    sched.enqueue(job("a"))
    assert sched.cancel("a").status == "cancelled"
    assert sched.claim("w") is None
    assert sched.cancel("a").status == "cancelled"


def test_cancel_running_is_cooperative(sched: Scheduler) -> None:
    sched.enqueue(job("a"))
    run_one(sched)
    assert sched.cancel("a").status == "running"
    assert sched.heartbeat("a", worker_id="w").cancel_requested
    assert sched.cancel_requested("a")
    ended = sched.complete("a", {"partial": True}, worker_id="w")
    assert ended.status == "cancelled"
    with pytest.raises(Conflict, match="is cancelled, not running"):
        sched.complete("a", worker_id="w")


def test_cancel_finished_job_is_a_conflict(sched: Scheduler) -> None:
    sched.enqueue(job("a"))
    run_one(sched)
    sched.complete("a", worker_id="w")
    with pytest.raises(Conflict, match="already ended succeeded"):
        sched.cancel("a")


# -- limits ------------------------------------------------------------------


def test_concurrency_key_limits_running_jobs(sched: Scheduler) -> None:
    c2 = Constraints(concurrency_key="gpu", max_concurrency=2)
    sched.enqueue_many([job(f"g{i}", constraints=c2) for i in range(3)] + [job("free")])
    got = [run_one(sched).id for _ in range(3)]
    assert got == ["g0", "g1", "free"]
    assert sched.claim("w") is None
    sched.complete("g0", worker_id="w")
    assert run_one(sched).id == "g2"


def test_concurrency_key_defaults_to_one(sched: Scheduler) -> None:
    c = Constraints(concurrency_key="mutex")
    sched.enqueue_many([job("m1", constraints=c), job("m2", constraints=c)])
    run_one(sched)
    assert sched.claim("w") is None


def test_tenant_limit(sched: Scheduler) -> None:
    sched.set_tenant_limit("acme", 1)
    sched.enqueue_many([job("a1", tenant_id="acme"), job("a2", tenant_id="acme"), job("z")])
    assert [run_one(sched).id for _ in range(2)] == ["a1", "z"]
    assert sched.claim("w") is None
    sched.set_tenant_limit("acme", None)
    assert run_one(sched).id == "a2"


# -- checkpoints -------------------------------------------------------------


def test_last_checkpoint_survives_a_reclaim(sched: Scheduler, clock: FakeClock) -> None:
    sched.enqueue(job("a"))
    sched.claim("w1", lease_s=1)
    assert sched.last_checkpoint("a") is None
    ref = CheckpointRef(uri="file:///ckpt/10", step=10)
    sched.record_checkpoint("a", ref)
    clock.advance(2)
    assert sched.claim("w2") is not None
    assert sched.last_checkpoint("a") == ref
    got, got_ref = sched.get_with_checkpoint("a")
    assert (got, got_ref) == (sched.get("a"), ref)


# -- bad input ---------------------------------------------------------------


def test_unknown_id_is_not_found_everywhere(sched: Scheduler) -> None:
    for call in (
        lambda: sched.get("nope"),
        lambda: sched.cancel("nope"),
        lambda: sched.retry("nope"),
        lambda: sched.history("nope"),
        lambda: sched.last_checkpoint("nope"),
        lambda: sched.get_with_checkpoint("nope"),
        lambda: sched.complete("nope"),
    ):
        with pytest.raises(NotFound) as info:
            call()
        assert "'nope'" in info.value.message
        assert exit_code_for(info.value) == 4


def test_unknown_status_filter(sched: Scheduler) -> None:
    with pytest.raises(ConfigError, match="not a job status"):
        sched.list(status="weird")


def test_corrupt_database_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "crucible.db"
    path.write_bytes(b"this is not sqlite at all" * 200)
    with pytest.raises(ConfigError) as info:
        Scheduler(path)
    assert str(path) in info.value.message
    assert "corrupt" in info.value.message
    assert info.value.hint is not None
    assert "move the file aside" in info.value.hint


def test_locked_database_names_the_file(db_file: Path) -> None:
    Scheduler(db_file).close()
    holder = sqlite3.connect(db_file, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        s = Scheduler(db_file, busy_timeout_s=0.1)
        with pytest.raises(CrucibleError) as info:
            s.enqueue(job("a"))
        assert str(db_file) in info.value.message
        assert "locked" in info.value.message
        assert info.value.hint is not None
        assert "wait" in info.value.hint
        assert exit_code_for(info.value) == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert s.list() == []
    s.close()


def test_failed_write_is_not_acknowledged(sched: Scheduler) -> None:
    """SQLite's max_page_count makes the disk 'full' for real (SQLITE_FULL) at a chosen size."""
    conn = sched._db.conn()  # pyright: ignore[reportPrivateUsage]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages + 2}")
    stored: list[str] = []

    def fill() -> None:
        for i in range(100):
            stored.append(sched.enqueue(job(f"j{i}", payload="x" * 3000)).id)

    with pytest.raises(CrucibleError) as info:
        fill()
    assert "full" in info.value.message
    assert str(sched.path) in info.value.message
    assert [j.id for j in sched.list()] == stored
    assert len(stored) < 100


def test_every_job_ends_in_exactly_one_terminal_state(sched: Scheduler) -> None:
    sched.enqueue_many([job(f"j{i}") for i in range(6)])
    outcomes = [
        lambda i: sched.complete(i, worker_id="w"),
        lambda i: sched.fail(i, ValueError(), worker_id="w"),
        lambda i: sched.cancel(i) and sched.complete(i, worker_id="w"),
    ]
    for n in range(6):
        j = run_one(sched)
        outcomes[n % 3](j.id)
    for j in sched.list():
        terminal = [t for t in sched.history(j.id) if t.to_status in TERMINAL_STATUSES]
        assert len(terminal) == 1
        assert terminal[0].to_status == j.status


def test_stored_job_round_trips_non_defaults(sched: Scheduler) -> None:
    original = Job(
        id="full",
        kind="evaluation",
        priority="offline",
        payload={"keep": None, "nested": {"a": [1, None]}},
        constraints=Constraints(
            retry_policy=RetryPolicy(max_attempts=7, jitter=0.5, retryable_errors=[]),
            timeout_s=3.5,
            concurrency_key="k",
        ),
        tenant_id="acme",
        metadata={"owner": "me"},
    )
    stored = sched.get(sched.enqueue(original).id)
    assert stored.payload == original.payload
    assert stored.constraints == original.constraints
    assert stored.resources == original.resources
    assert (stored.kind, stored.priority, stored.tenant_id) == ("evaluation", "offline", "acme")
    assert stored.metadata == {"owner": "me"}


def test_database_of_another_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "crucible.db"
    Scheduler(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    with pytest.raises(ConfigError) as info:
        Scheduler(path)
    assert str(path) in info.value.message
    assert "layout 1" in info.value.message
    assert info.value.hint is not None
    assert "move it aside" in info.value.hint

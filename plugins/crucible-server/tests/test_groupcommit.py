"""Concurrent submissions share SQLite transactions; each still gets its own outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from crucible_server.groupcommit import GroupCommit

from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir.work import Job
from crucible_core.queue.scheduler import Scheduler


def test_concurrent_submissions_share_transactions_and_are_all_stored(home: Path) -> None:
    with Scheduler() as sched:

        async def go() -> tuple[list[Job], GroupCommit]:
            commits = GroupCommit(sched, asyncio.to_thread)
            jobs = [Job(id=f"job-{i:03d}", kind="experiment_step", payload={}) for i in range(60)]
            return list(await asyncio.gather(*(commits.enqueue(j) for j in jobs))), commits

        stored, commits = asyncio.run(go())
        assert [j.id for j in stored] == [f"job-{i:03d}" for i in range(60)]
        assert commits.jobs == 60
        assert commits.commits <= 2  # one transaction (one fsync) for all, not 60
        assert {sched.get(j.id).status for j in stored} == {stored[0].status}


def test_a_bad_job_fails_alone_and_its_batch_mates_are_stored(home: Path) -> None:
    with Scheduler() as sched:

        async def go() -> list[Job | BaseException]:
            commits = GroupCommit(sched, asyncio.to_thread)
            jobs = [Job(id=f"ok-{i}", kind="experiment_step", payload={}) for i in range(5)]
            jobs.insert(3, Job(id="not an id!", kind="experiment_step", payload={}))
            return list(
                await asyncio.gather(*(commits.enqueue(j) for j in jobs), return_exceptions=True)
            )

        results = asyncio.run(go())
        bad = results.pop(3)
        assert isinstance(bad, ConfigError)
        assert "not an id!" in str(bad)
        assert [r.id for r in results if isinstance(r, Job)] == [f"ok-{i}" for i in range(5)]
        for i in range(5):
            assert sched.get(f"ok-{i}").id == f"ok-{i}"


def test_an_idempotent_resubmission_in_the_same_batch_returns_the_first_job(home: Path) -> None:
    with Scheduler() as sched:

        async def go() -> list[Job]:
            commits = GroupCommit(sched, asyncio.to_thread)
            first = Job(id="job-a", kind="experiment_step", payload={}, idempotency_key="k1")
            again = Job(id="job-b", kind="experiment_step", payload={}, idempotency_key="k1")
            return list(await asyncio.gather(commits.enqueue(first), commits.enqueue(again)))

        a, b = asyncio.run(go())
        assert a.id == b.id == "job-a"
        with pytest.raises(NotFound):  # the second id was never stored
            sched.get("job-b")

"""Group commit: submissions that arrive together are persisted in one transaction.

Every accepted ``POST /v1/jobs`` is answered only once its job is committed
(``PRAGMA synchronous=FULL``: on disk). One transaction per request made
concurrent submitters queue for SQLite's single write lock and pay one fsync
each (about 200 submissions/s on the development machine, whatever the
number of clients). Here the first submission starts a commit in the thread
pool; the ones that arrive while it runs wait and go together in the next
one (:meth:`~crucible_core.queue.scheduler.Scheduler.enqueue_many`, one
fsync), up to ``max_batch`` at a time.

Each submission still gets its own outcome: when a batch fails as a whole
(``enqueue_many`` is atomic), its jobs are committed again one by one, so a
bad job fails alone. A caller that goes away while waiting does not take
its job back: like a single commit already under way, it completes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crucible_core.ir.work import Job
    from crucible_core.queue.scheduler import Scheduler

__all__ = ["GroupCommit"]


class GroupCommit:
    """Enqueue jobs on ``scheduler``, concurrent callers sharing transactions (one loop)."""

    def __init__(
        self,
        scheduler: Scheduler,
        in_thread: Callable[..., Awaitable[Any]],
        *,
        max_batch: int = 256,
    ) -> None:
        self._scheduler = scheduler
        self._in_thread = in_thread
        self._max_batch = max_batch
        self._pending: list[tuple[Job, asyncio.Future[Job]]] = []
        self._committing = False
        self._task: asyncio.Task[None] | None = None  # the running commit loop
        #: Transactions and jobs committed (for tests and the benchmark's report).
        self.commits = 0
        self.jobs = 0

    async def enqueue(self, job: Job) -> Job:
        """``job`` as stored, once its transaction has committed."""
        done: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._pending.append((job, done))
        if not self._committing:
            self._committing = True
            self._task = asyncio.ensure_future(self._commit_pending())
        return await asyncio.shield(done)

    async def _commit_pending(self) -> None:
        batch: list[tuple[Job, asyncio.Future[Job]]] = []
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._commit(batch)
                batch = []
        except BaseException as exc:  # e.g. the loop shutting down: nobody waits forever
            for _, done in batch + self._pending:
                _fail(done, exc)
            self._pending.clear()
            raise
        finally:
            self._committing = False

    async def _commit(self, batch: list[tuple[Job, asyncio.Future[Job]]]) -> None:
        try:
            stored = await self._in_thread(self._scheduler.enqueue_many, [j for j, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0][1], exc)
                return
            for job, done in batch:  # one bad job must not fail the others
                try:
                    one = await self._in_thread(self._scheduler.enqueue, job)
                except Exception as exc_one:
                    _fail(done, exc_one)
                else:
                    self._count(1)
                    _succeed(done, one)
            return
        self._count(len(stored))
        for (_, done), one in zip(batch, stored, strict=True):
            _succeed(done, one)

    def _count(self, jobs: int) -> None:
        self.commits += 1
        self.jobs += jobs


def _succeed(done: asyncio.Future[Job], job: Job) -> None:
    if not done.done():
        done.set_result(job)


def _fail(done: asyncio.Future[Job], exc: BaseException) -> None:
    if not done.done():
        done.set_exception(exc)

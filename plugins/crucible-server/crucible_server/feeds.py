"""One telemetry poller per job, shared by all of its stream subscribers in this process.

A :class:`Feeds` hands out :meth:`~Feeds.stream` iterators. The first
subscriber of a job starts a poll task that reads the job's telemetry.jsonl
(one ``stat`` per ``poll_s`` while nothing is new; the job's status at most
once a second) into memory and wakes the subscribers; later subscribers
share it, so 100 subscribers cost about what one does. The task stops, and
the lines are dropped, when the last subscriber leaves. A subscriber
starting after event ``N`` gets the lines numbered above ``N`` (ids are line
numbers: see :mod:`crucible_server.telemetry`), then live lines, then an
``end`` item once the job is terminal and all of its lines were read.

``stream(..., sse=True)`` yields the events already encoded as Server-Sent
Events bytes, every event that is ready in one chunk (one send per poll per
subscriber, not one per event: per send, the ASGI and HTTP layers cost
more than the bytes), and a comment line (``: ping``) after ``heartbeat_s``
without one, so proxies keep the connection and a client that left is
noticed. Each event is encoded once per feed, and subscribers at the same
point share the same chunk (see docs/benchmarks.md, SSE fan-out);
:class:`crucible_server.sse.EventStream` sends the bytes as they are.

:meth:`Feeds.close` (the server is shutting down) ends every stream at
once, without the ``end`` item: a client reconnects with ``Last-Event-ID``
to the next server and misses nothing.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from crucible_core.ir.work import TERMINAL_STATUSES
from crucible_server.telemetry import TelemetryTail

if TYPE_CHECKING:
    from crucible_core.queue.scheduler import Scheduler

__all__ = ["Feeds"]

#: The heartbeat: an SSE comment, which clients ignore.
_PING = b": ping\r\n\r\n"

#: Seconds the stream waits, after the job's status turned terminal, for the job's
#: final ``job.state`` event (written just after the change) before it ends anyway.
_SETTLE_S = 2.0


class _Feed:
    def __init__(self, job_id: str) -> None:
        self.tail = TelemetryTail(job_id)
        self.ids: list[int] = []
        self.lines: list[tuple[int, str, str]] = []
        self.encoded: list[bytes] = []  # SSE bytes of lines[:len(encoded)], made once
        self.chunk: tuple[int, int, bytes] | None = None  # the newest joined range
        self.end_sse: bytes | None = None
        self.end: str | None = None
        self.changed = asyncio.Event()
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None


class Feeds:
    """The shared pollers of one app (one event loop)."""

    def __init__(
        self,
        scheduler: Scheduler,
        poll_s: float,
        in_thread: Callable[..., Awaitable[Any]],
        heartbeat_s: float | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._poll_s = poll_s
        self._in_thread = in_thread
        self._heartbeat_s = heartbeat_s
        self._feeds: dict[str, _Feed] = {}
        self._closed = False

    def close(self) -> None:
        """End every stream now and refuse new ones (server shutdown; idempotent)."""
        self._closed = True
        for feed in self._feeds.values():
            feed.changed.set()

    async def _poll(self, feed: _Feed) -> None:
        status_every = max(1, round(1.0 / self._poll_s))
        idle = 0
        ended: tuple[float, str] | None = None  # when the status was seen terminal, the end
        loop = asyncio.get_running_loop()
        woke = loop.time()  # when the subscribers were last woken
        while True:
            batch = feed.tail.read_raw()
            if ended is None and not batch and idle % status_every == 0:
                job = await self._in_thread(self._scheduler.get, feed.tail.job_id)
                if job.status in TERMINAL_STATUSES:
                    batch = feed.tail.read_raw()  # written before the status changed
                    ended = (loop.time(), json.dumps({"job_id": job.id, "status": job.status}))
            # The worker writes the job's final ``job.state`` event just after the status
            # changed: the end waits for it (or for _SETTLE_S of quiet, if it never comes).
            if (
                ended is not None
                and not batch
                and (_final(feed) or loop.time() - ended[0] >= _SETTLE_S)
            ):
                feed.end = ended[1]
            if batch:
                feed.lines.extend(batch)
                feed.ids.extend(n for n, _, _ in batch)
                idle = 0
            else:
                idle += 1
            # One timer per feed, not per subscriber: a wake with nothing new is a heartbeat.
            beat = self._heartbeat_s is not None and loop.time() - woke >= self._heartbeat_s
            if batch or feed.end is not None or beat:
                woke = loop.time()
                feed.changed.set()
                feed.changed = asyncio.Event()
            if feed.end is not None:
                return
            await asyncio.sleep(self._poll_s)

    async def stream(
        self, job_id: str, after: int, *, sse: bool = False
    ) -> AsyncGenerator[Any, None]:
        """SSE-shaped items (``id``, ``event``, ``data``) after event ``after``, then ``end``;
        with ``sse``, the same as encoded Server-Sent Events bytes, and a ``: ping`` comment
        for each heartbeat (``heartbeat_s`` of the feed without anything new)."""
        if self._closed:
            return
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = _Feed(job_id)
            feed.task = asyncio.ensure_future(self._poll(feed))
        feed.subscribers += 1
        try:
            last = after
            beat = False  # woken with nothing new: the feed's heartbeat
            while True:
                waiter = feed.changed
                # By id, not position: a new feed's lines arrive after this subscriber came.
                start = bisect.bisect_right(feed.ids, last)
                end = len(feed.lines)
                if start < end:
                    if sse:
                        last = feed.lines[end - 1][0]
                        yield _chunk(feed, start, end)
                    else:
                        for n, kind, raw in feed.lines[start:end]:
                            last = n
                            yield {"id": str(n), "event": kind, "data": raw}
                    beat = False
                    continue  # more may have come (and the end) while this one was sent
                if feed.end is not None:
                    if sse:
                        if feed.end_sse is None:
                            feed.end_sse = _sse(None, "end", feed.end)
                        yield feed.end_sse
                    else:
                        yield {"event": "end", "data": feed.end}
                    return
                if self._closed:
                    return
                if beat:
                    beat = False
                    if sse:
                        yield _PING
                    continue  # take the feed's new waiter
                await waiter.wait()
                beat = True
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0 and self._feeds.get(job_id) is feed:
                del self._feeds[job_id]
                if feed.task is not None and not feed.task.done():
                    feed.task.cancel()


def _sse(n: int | None, kind: str, data: str) -> bytes:
    from sse_starlette import ServerSentEvent

    return ServerSentEvent(data=data, event=kind, id=None if n is None else str(n)).encode()


def _encoded(feed: _Feed, i: int) -> bytes:
    """Line ``i`` of ``feed`` as SSE bytes, encoded by its first subscriber and kept."""
    while len(feed.encoded) <= i:
        n, kind, raw = feed.lines[len(feed.encoded)]
        feed.encoded.append(_sse(n, kind, raw))
    return feed.encoded[i]


def _chunk(feed: _Feed, start: int, end: int) -> bytes:
    """Lines ``start..end`` of ``feed`` as one SSE chunk; subscribers in step share it."""
    cached = feed.chunk
    if cached is not None and cached[0] == start and cached[1] == end:
        return cached[2]
    data = (
        b"".join(_encoded(feed, i) for i in range(start, end))
        if end - start > 1
        else (_encoded(feed, start))
    )
    feed.chunk = (start, end, data)
    return data


def _final(feed: _Feed) -> bool:
    """Whether the feed's last line is the job's terminal ``job.state`` event."""
    if not feed.lines or feed.lines[-1][1] != "job.state":
        return False
    try:
        status = json.loads(feed.lines[-1][2]).get("data", {}).get("status")
    except (ValueError, AttributeError):
        return False
    return status in TERMINAL_STATUSES

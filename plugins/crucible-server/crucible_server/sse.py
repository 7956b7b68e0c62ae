"""The HTTP response of an events stream: encoded Server-Sent Events chunks, one send each.

Why not ``sse_starlette.EventSourceResponse`` (which the events stream used
before): it wraps every send in an anyio cancel scope and runs each
response's pinger and shutdown watcher as tasks of its own; with 100
subscribers of a training job those per-send costs were about half of the
API process's CPU time per event (docs/benchmarks.md, SSE fan-out). Here the
feed (:mod:`crucible_server.feeds`) already yields ready-made bytes,
heartbeat comments included, so the response only has to send them and to
notice a client that went away. The wire format is still sse-starlette's
(events are encoded by its ``ServerSentEvent``).

Contract of :class:`EventStream`: ``200 text/event-stream`` with caching and
proxy buffering off; every chunk from ``chunks`` is one ASGI body message;
the body ends when ``chunks`` ends (the job ended, or the server is shutting
down: :meth:`crucible_server.feeds.Feeds.close`) or as soon as the client
disconnects, and in every case ``chunks`` is closed, so the feed's
bookkeeping of its subscribers stays right.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from starlette.responses import Response

__all__ = ["EventStream"]


class EventStream(Response):
    """A streaming ``text/event-stream`` response over already encoded SSE chunks."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncGenerator[bytes, None]) -> None:
        # Not Response.__init__: it would declare a Content-Length for the empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        self._chunks = chunks

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        streaming = asyncio.ensure_future(self._stream(send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((streaming, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, gone):
                task.cancel()
            # Let the cancelled stream close its generator before the response returns.
            await asyncio.wait((streaming, gone))
        error = None if streaming.cancelled() else streaming.exception()
        if error is not None:
            raise error

    async def _stream(self, send: Any) -> None:
        async with contextlib.aclosing(self._chunks) as chunks:
            try:
                async for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                return  # the client's connection broke mid-send: nothing to tell it


async def _disconnected(receive: Any) -> None:
    """Return when the client disconnects (the request has no body left to read)."""
    while (await receive())["type"] != "http.disconnect":
        pass

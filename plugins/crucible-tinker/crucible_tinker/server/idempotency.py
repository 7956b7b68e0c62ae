"""``X-Idempotency-Key``: a POST already answered gets the same answer again.

The SDK's HTTP layer reuses the key across its own retries. A request whose
key is still in flight waits for that one's answer instead of running twice;
only successful JSON answers are remembered (an error may be retried for
real), the oldest dropped first past ``size``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from starlette.responses import Response

from crucible_tinker.server.futures import JSON

__all__ = ["CACHE_SIZE", "Idempotency"]

#: Answers remembered by default.
CACHE_SIZE = 20_000


class Idempotency:
    """Answers already given, by (path, X-Idempotency-Key); at most ``size`` are kept."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._done: OrderedDict[tuple[str, str], tuple[int, bytes]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[tuple[int, bytes]]] = {}
        self.hits = 0

    async def run(
        self, key: tuple[str, str], produce: Callable[[], Awaitable[Response]]
    ) -> Response:
        cached = self._done.get(key)
        if cached is not None:
            self.hits += 1
            return Response(cached[1], status_code=cached[0], media_type=JSON)
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            status, body = await asyncio.shield(pending)
            return Response(body, status_code=status, media_type=JSON)
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            response = await produce()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            self._inflight.pop(key, None)
        body = bytes(response.body)
        if 200 <= response.status_code < 300 and response.media_type == JSON:
            self._done[key] = (response.status_code, body)
            while len(self._done) > self.size:
                self._done.popitem(last=False)
        if not fut.done():
            fut.set_result((response.status_code, body))
        return response

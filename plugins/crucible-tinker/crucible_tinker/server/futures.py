"""Server-side futures: what ``retrieve_future`` answers from.

Every queued operation gets an :class:`Entry` at once (its ``request_id`` is
what the POST returns); the work resolves it later, from any thread, with a
:class:`Payload` (JSON or protobuf bytes) or a :class:`Failure` (an error
message and the category the SDK understands: ``user``, ``server`` or
``unknown``). ``retrieve_future`` long-polls :meth:`FutureStore.wait`.
Finished entries are kept for ``ttl_s`` seconds so that a retried retrieve
(after a lost connection) still finds its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Literal

from crucible_tinker.server.ids import new_request_id

__all__ = ["Entry", "Failure", "FutureStore", "Payload"]

Category = Literal["user", "server", "unknown"]
JSON = "application/json"
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class Payload:
    """A finished result: the bytes to send and their media type."""

    body: bytes
    media_type: str = JSON


@dataclass(frozen=True)
class Failure:
    """A failed operation, as ``{"error": message, "category": category}``."""

    message: str
    category: Category = "server"


Outcome = Payload | Failure


class Entry:
    """One pending or finished operation."""

    def __init__(self, request_id: str, kind: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.kind = kind
        self.created = time.monotonic()
        self.completed_at: float | None = None
        self.future: Future[Outcome] = Future()
        self._loop = loop
        self._event = asyncio.Event()
        self.future.add_done_callback(self._wake)

    def _wake(self, _: Future[Outcome]) -> None:
        self.completed_at = time.monotonic()
        # RuntimeError: the loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    def resolve(self, outcome: Outcome) -> None:
        """Finish the entry (first resolution wins; later ones are ignored)."""
        if not self.future.done():
            # InvalidStateError: a concurrent resolve won the race.
            with contextlib.suppress(InvalidStateError):
                self.future.set_result(outcome)

    def fail(self, message: str, category: Category = "server") -> None:
        self.resolve(Failure(message, category))

    @property
    def done(self) -> bool:
        return self.future.done()

    @property
    def failed(self) -> bool:
        return self.future.done() and isinstance(self.future.result(), Failure)

    def outcome(self) -> Outcome:
        return self.future.result(timeout=0)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if the entry is finished."""
        if self.future.done():
            return True
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return self.future.done()
        return True


class FutureStore:
    """All entries by request id; thread-safe; finished ones expire after ``ttl_s``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, ttl_s: float = 900.0) -> None:
        self._loop = loop
        self._ttl = ttl_s
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._last_purge = time.monotonic()

    def create(self, kind: str) -> Entry:
        entry = Entry(new_request_id(), kind, self._loop)
        with self._lock:
            self._entries[entry.request_id] = entry
        self._maybe_purge()
        return entry

    def get(self, request_id: str) -> Entry | None:
        with self._lock:
            return self._entries.get(request_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < min(60.0, self._ttl):
            return
        self._last_purge = now
        with self._lock:
            expired = [
                rid
                for rid, e in self._entries.items()
                if e.completed_at is not None and now - e.completed_at > self._ttl
            ]
            for rid in expired:
                del self._entries[rid]

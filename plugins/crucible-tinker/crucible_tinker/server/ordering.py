"""Per-model ordering: operations run strictly by ``seq_id``, each exactly once.

The SDK numbers every operation on a training model (``seq_id`` 1, 2, ...;
creation is 0) and may deliver them out of order: the chunks of one
``forward_backward`` are POSTed concurrently, the first chunk last, and any
POST may be retried after a lost answer. :class:`OrderedQueue` buffers
arrivals and releases them in ``seq_id`` order; a ``seq_id`` it has already
seen is answered with the request id given the first time, so a retried
submission never runs twice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Offer", "OrderedQueue", "StaleSequence"]

T = TypeVar("T")


class StaleSequence(ValueError):
    """A ``seq_id`` below the next expected one that was never seen (cannot be ordered)."""


@dataclass(frozen=True)
class Offer:
    """What :meth:`OrderedQueue.offer` did: ``accepted`` False means a duplicate."""

    accepted: bool
    request_id: str
    out_of_order: bool = False


class OrderedQueue(Generic[T]):
    """A thread-safe buffer that releases items by consecutive sequence number."""

    def __init__(self, first_seq: int = 0) -> None:
        self._next = first_seq
        self._pending: dict[int, T] = {}
        self._seen: dict[int, str] = {}
        self._cond = threading.Condition()
        self._closed = False

    @property
    def next_seq(self) -> int:
        with self._cond:
            return self._next

    def pending_seqs(self) -> list[int]:
        with self._cond:
            return sorted(self._pending)

    def seen(self, seq_id: int) -> str | None:
        """The request id a ``seq_id`` was accepted under, if any."""
        with self._cond:
            return self._seen.get(seq_id)

    def offer(self, seq_id: int, request_id: str, item: T) -> Offer:
        """Buffer ``item`` under ``seq_id`` unless that ``seq_id`` was seen before."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the queue is closed")
            known = self._seen.get(seq_id)
            if known is not None:
                return Offer(False, known)
            if seq_id < self._next:
                raise StaleSequence(
                    f"seq_id {seq_id} is below the next expected {self._next} and was never "
                    "received; operations on a model must be numbered consecutively"
                )
            gap = any(s not in self._seen for s in range(self._next, seq_id))
            self._seen[seq_id] = request_id
            self._pending[seq_id] = item
            self._cond.notify_all()
            return Offer(True, request_id, out_of_order=gap)

    def take(self, timeout: float | None = None) -> T | None:
        """The item with the next ``seq_id``, waiting up to ``timeout``; None on timeout/close."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._closed or self._next in self._pending, timeout=timeout
            )
            if not ok or self._next not in self._pending:
                return None
            item = self._pending.pop(self._next)
            self._next += 1
            return item

    def close(self) -> list[T]:
        """Stop releasing; return the items still buffered (their callers must be failed)."""
        with self._cond:
            self._closed = True
            left = [self._pending[k] for k in sorted(self._pending)]
            self._pending.clear()
            self._cond.notify_all()
            return left

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

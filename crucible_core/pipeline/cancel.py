"""Cooperative cancellation: a flag long work polls at safe points.

:class:`CancelFlag` satisfies :class:`crucible_core.contracts.CancelToken`.
A flag may have a parent (a job's flag is the parent of each stage's), so
cancelling the job cancels every stage while a stage's own flag can be set
without touching its siblings. ``reason`` says why (``cancelled``,
``timeout``, ``lease_lost``, ``shutdown``, ``interrupted`` for a signal);
:func:`reason_of` finds the reason of a flag set through a parent.
"""

from __future__ import annotations

import threading
import time

from crucible_core.contracts import CancelToken

__all__ = ["CancelFlag", "reason_of"]


class CancelFlag:
    """A settable cancellation token, optionally chained to a parent token."""

    def __init__(self, parent: CancelToken | None = None) -> None:
        self._event = threading.Event()
        self._parent = parent
        self.reason: str | None = None

    def set(self, reason: str = "cancelled") -> None:
        """Request cancellation (the first reason given is kept)."""
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        """Whether this flag or its parent was set."""
        return self._event.is_set() or (self._parent is not None and self._parent.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until this flag is set or ``timeout`` passes; True if set.

        A parent that is set is noticed within 50 ms.
        """
        if self._parent is None:
            return self._event.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._event.wait(0.05 if left is None else min(0.05, left))
        return True


def reason_of(token: CancelToken | None) -> str | None:
    """The reason ``token`` (or the nearest ancestor that has one) was set with; None if unset."""
    seen = 0
    node: object = token
    while node is not None and seen < 64:  # a parent chain is short; never loop forever
        reason = getattr(node, "reason", None)
        if isinstance(reason, str):
            return reason
        node = getattr(node, "_parent", None)
        seen += 1
    return None

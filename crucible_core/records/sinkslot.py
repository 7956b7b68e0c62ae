"""The one sink of a kind a process has: built from the environment on first use.

Why: every interop sink (crucible-mlflow, crucible-otel, crucible-openlineage)
is reached from its ``on_event`` hook, which has no place to keep a sink but
the process. :class:`SinkSlot` is that place, written once: the first
:meth:`SinkSlot.get` builds the sink (``build()``: None means off, and stays
off for the process), registers its close at exit, and every later call
returns the same sink; :meth:`SinkSlot.install` puts a sink there by hand
(tests, embedding); :meth:`SinkSlot.reset` closes it and forgets it, so the
next :meth:`SinkSlot.get` builds a new one from the environment as it is
then; :meth:`SinkSlot.deliver` hands an event to the sink (what a sink
plugin's ``on_event`` calls). After the process began exiting no new sink
is built.

Thread-safe: ``build`` runs at most once per configuration, under a lock.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["SinkSlot"]

S = TypeVar("S")


class SinkSlot(Generic[S]):
    """A process-wide sink slot (module docstring).

    ``close(sink, timeout)`` closes a sink; ``timeout`` None means the sink's
    own default (what the process waits at exit). ``send(sink, event)`` hands
    one event to a sink (its never-blocking ``offer``).
    """

    def __init__(
        self,
        build: Callable[[], S | None],
        close: Callable[[S, float | None], object],
        send: Callable[[S, Any], object],
    ) -> None:
        self._build = build
        self._close = close
        self._send = send
        self._sink: S | None = None
        self._configured = False
        self._exiting = False
        self._registered = False
        self._lock = threading.Lock()

    def current(self) -> S | None:
        """The sink now (None when off, or nothing asked for it yet)."""
        return self._sink

    def get(self) -> S | None:
        """The sink, built from the environment on the first call (None when off)."""
        if self._configured:
            return self._sink
        with self._lock:
            if not self._configured and not self._exiting:
                self._configured = True
                self._sink = self._build()
                if self._sink is not None and not self._registered:
                    self._registered = True
                    atexit.register(self._at_exit)
            return self._sink

    def deliver(self, event: Any) -> None:
        """Hand ``event`` to the sink, building it from the environment first (if on)."""
        sink = self.get()
        if sink is not None:
            self._send(sink, event)

    def install(self, sink: S | None) -> S | None:
        """Make ``sink`` the process's sink (None: off); the one it replaces, not closed."""
        with self._lock:
            previous, self._sink, self._configured = self._sink, sink, True
        return previous

    def reset(self, timeout: float | None = None) -> S | None:
        """Close the sink within ``timeout`` (None: its default) and forget it; returns it."""
        with self._lock:
            sink, self._sink, self._configured = self._sink, None, False
        if sink is not None:
            self._close(sink, timeout)
        return sink

    def _at_exit(self) -> None:
        with self._lock:
            self._exiting = True
            sink = self._sink
        if sink is not None:
            self._close(sink, None)

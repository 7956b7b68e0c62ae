"""How the kit calls a plugin: bounded in time, every failure a :class:`ConformanceError`.

Why a thread: a plugin call that hangs (a backend waiting on a dead server,
a stage that never polls its cancel token) must fail the author's test within
``timeout`` instead of hanging it, and Python cannot interrupt a call in the
calling thread. So a :class:`Calls` runs every call on one daemon worker
thread (one per check, so a plugin that keeps per-thread state sees a single
thread) and waits at most ``timeout`` for each. A call that overruns is
abandoned: its thread is a daemon, so it never keeps the interpreter alive.

Why wrap exceptions: an author reading a failed conformance test needs the
call that failed and the rule the kit was checking, not a bare traceback from
deep inside their plugin; the original exception stays chained as
``__cause__``.
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Calls", "ConformanceError", "require", "resolve"]

T = TypeVar("T")
_Job = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], "cf.Future[Any]"]


class ConformanceError(AssertionError):
    """A plugin broke a contract rule; the message names the call and the rule."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConformanceError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConformanceError(message)


class Calls:
    """Runs plugin calls on one daemon thread, each bounded by ``timeout`` seconds.

    ``calls(call, rule, fn, *args)`` returns ``fn(*args)``; if it raises, or
    does not return within ``timeout``, a :class:`ConformanceError` names
    ``call`` and ``rule``. :meth:`attempt` returns the exception instead of
    raising it, for the checks where refusing is an allowed answer. Use as a
    context manager so the thread ends with the check.
    """

    def __init__(self, timeout: float) -> None:
        require(timeout > 0, f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        #: True once a call overran: the worker thread is still inside it.
        self.stuck = False
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="crucible-conformance", daemon=True)
        self._thread.start()

    def __enter__(self) -> Calls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let the worker thread end once it is done with the current call."""
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, kwargs, box = job
            if not box.set_running_or_notify_cancel():
                continue
            try:
                box.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the waiting check, whatever it is
                box.set_exception(exc)

    def attempt(
        self, call: str, rule: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> tuple[T | None, BaseException | None]:
        """``(result, None)`` or ``(None, exception)``; overrunning ``timeout`` always fails."""
        return self.attempt_within(self.timeout, call, rule, fn, args, kwargs)

    def attempt_within(
        self,
        limit: float,
        call: str,
        rule: str,
        fn: Callable[..., T],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> tuple[T | None, BaseException | None]:
        """:meth:`attempt` with its own time ``limit`` in seconds."""
        box: cf.Future[T] = cf.Future()
        self._jobs.put((fn, args, kwargs or {}, box))
        done, _ = cf.wait([box], timeout=limit)
        if not done:
            box.cancel()
            self.stuck = True
            raise ConformanceError(f"{call} did not return within {limit} s (checking: {rule})")
        exc = box.exception()
        if exc is None:
            return box.result(), None
        if isinstance(exc, KeyboardInterrupt):  # the author pressed Ctrl-C: not ours to judge
            raise exc
        return None, exc

    def __call__(
        self, call: str, rule: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> T:
        result, exc = self.attempt(call, rule, fn, *args, **kwargs)
        if exc is not None:
            if isinstance(exc, ConformanceError):
                raise exc
            raise ConformanceError(
                f"{call} raised {type(exc).__name__}: {exc} (checking: {rule})"
            ) from exc
        return result  # type: ignore[return-value]  # attempt returned no exception


def resolve(calls: Calls, future: Any, call: str, rule: str) -> Any:
    """The value of ``future`` (a :class:`~crucible_core.contracts.Future`), bounded in time."""
    from crucible_core.contracts import Future

    require(
        isinstance(future, Future),
        f"{call} must return a Future (an object with result() and done()), "
        f"got {type(future).__name__}",
    )
    name = f"{call} (its future's result)"
    # result(timeout) enforces the deadline; the extra second only catches a
    # future that ignores its timeout argument, so the clearer message wins.
    value, exc = calls.attempt_within(
        calls.timeout + 1.0, name, rule, future.result, (calls.timeout,)
    )
    if isinstance(exc, TimeoutError) and not future.done():
        raise ConformanceError(
            f"{call}'s future did not resolve within {calls.timeout} s (checking: {rule})"
        ) from exc
    if exc is not None:
        raise ConformanceError(
            f"{name} raised {type(exc).__name__}: {exc} (checking: {rule})"
        ) from exc
    return value

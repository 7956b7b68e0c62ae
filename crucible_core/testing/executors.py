"""``check_executor``: an Executor runs what it is given and reports it faithfully.

What it asserts (each failure names the call and the rule):

1. The object has ``submit`` and ``shutdown``
   (:class:`~crucible_core.contracts.Executor`).
2. ``submit(fn, *args, **kwargs)`` returns a Future resolving to
   ``fn(*args, **kwargs)``, keyword arguments included; eight submissions all
   resolve, each to its own result.
3. An exception raised by ``fn`` comes out of ``future.result()``, not out
   of ``submit``, with its class and message; a
   :class:`~crucible_core.errors.BackendError` keeps ``retryable`` (the
   scheduler retries on it) and its ``code``.
4. ``shutdown(wait=True)`` returns once submitted work is done, and a later
   ``submit`` raises instead of silently dropping the work.

The callables the kit submits are module-level functions of this module,
so executors that pickle work into other processes can run them.
"""

from __future__ import annotations

import contextlib
from typing import Any

from crucible_core.contracts import Executor
from crucible_core.errors import BackendError
from crucible_core.testing._guard import Calls, ConformanceError, require, resolve

__all__ = ["check_executor"]


def _combine(a: int, b: int, *, scale: int = 1) -> tuple[int, int]:
    return (a + b) * scale, a


def _fail(retryable: bool) -> None:
    raise BackendError("conformance: deliberate failure", retryable=retryable, where="kit")


def _fail_plain() -> None:
    raise ValueError("conformance: deliberate ValueError")


def check_executor(executor: Any, *, timeout: float = 120.0) -> None:
    """Submit work to ``executor``, check results, errors and shutdown; shuts it down.

    ``timeout`` bounds every call and every future in seconds.
    """
    require(
        isinstance(executor, Executor),
        "an executor needs submit(fn, *args, **kwargs) and shutdown(wait) "
        "(crucible_core.contracts.Executor)",
    )
    with Calls(timeout) as calls:
        try:
            _check_work(calls, executor)
        except BaseException:
            # Do not leak the executor's threads or processes after a failure.
            if not calls.stuck:
                with contextlib.suppress(ConformanceError):
                    calls.attempt("shutdown(wait=False)", "cleanup", executor.shutdown, False)
            raise
        calls(
            "shutdown(wait=True)",
            "shutdown waits for submitted work",
            executor.shutdown,
            True,
        )
        _, exc = calls.attempt(
            "submit after shutdown",
            "a shut-down executor refuses work",
            executor.submit,
            _combine,
            1,
            1,
        )
        require(
            exc is not None,
            "submit after shutdown(wait=True) must raise (RuntimeError), not accept work that "
            "will never run",
        )


def _check_work(calls: Calls, executor: Any) -> None:
    rule = "submit runs fn(*args, **kwargs) and its future gives the result"
    future = calls("submit(fn, 2, 3, scale=4)", rule, executor.submit, _combine, 2, 3, scale=4)
    value = resolve(calls, future, "submit(fn, 2, 3, scale=4)", rule)
    require(
        value == (20, 2),
        f"submit(fn, 2, 3, scale=4) resolved to {value!r}; fn returns (20, 2) "
        "(positional and keyword arguments are passed through)",
    )
    futures = [
        calls(f"submit(fn, {i}, 1)", rule, executor.submit, _combine, i, 1) for i in range(8)
    ]
    got = [resolve(calls, f, f"submit(fn, {i}, 1)", rule) for i, f in enumerate(futures)]
    require(
        got == [(i + 1, i) for i in range(8)],
        f"eight submissions resolved to {got!r}: each future must carry its own result",
    )
    require(all(f.done() for f in futures), "a future whose result was read must report done()")
    for retryable in (True, False):
        _check_error(calls, executor, _fail, (retryable,), BackendError, retryable)
    _check_error(calls, executor, _fail_plain, (), ValueError, None)


def _check_error(
    calls: Calls,
    executor: Any,
    fn: Any,
    args: tuple[Any, ...],
    kind: type[Exception],
    retryable: bool | None,
) -> None:
    call = f"submit({fn.__name__}{args!r})"
    rule = "an exception in fn is raised by future.result(), not by submit"
    future = calls(call, rule, executor.submit, fn, *args)
    require(
        hasattr(future, "result") and hasattr(future, "done"),
        f"{call} must return a Future, got {type(future).__name__}",
    )
    _, exc = calls.attempt(f"{call} (its future's result)", rule, future.result, calls.timeout)
    if not isinstance(exc, kind):
        what = "returned" if exc is None else f"raised {type(exc).__name__}: {exc}"
        raise ConformanceError(
            f"{call}: fn raises {kind.__name__}, but future.result() {what}; the exception "
            "must come out unchanged so the scheduler can classify it"
        ) from exc
    require("deliberate" in str(exc), f"{call}: the exception's message was lost: {str(exc)!r}")
    if retryable is not None:
        got = getattr(exc, "retryable", None)
        require(
            got is retryable,
            f"{call}: BackendError(retryable={retryable}) came back with retryable={got!r}; "
            "the scheduler's retries depend on it (pickle errors with their state)",
        )
        require(
            getattr(exc, "details", {}).get("where") == "kit",
            f"{call}: the error's details were lost on the way back",
        )

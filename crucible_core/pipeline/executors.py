"""The executors core ships: ``inline``, ``thread`` and ``process``.

Each satisfies :class:`crucible_core.contracts.Executor` (``submit`` returns
a ``concurrent.futures.Future``; ``shutdown``) and is registered through the
``register_executors`` hook by :mod:`crucible_core.builtins`, so
``crucible_core.get_executor("thread", max_workers=4)`` builds one and a
plugin (Ray) can add its own beside them.

- ``inline`` runs the callable in the caller's thread before ``submit``
  returns: deterministic, for tests and for stages that must not overlap.
- ``thread`` runs callables in a thread pool: the pipeline's default, since
  stages share live services (the event bus, the artifact store, backends).
- ``process`` runs callables in a pool of fresh interpreters (``spawn``), so
  the callable and its arguments must be picklable (module-level functions,
  IR values). For CPU-bound work that must not hold this process's GIL.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Callable
from typing import Any

from crucible_core._options import check_count
from crucible_core.errors import ConfigError

__all__ = ["InlineExecutor", "ProcessExecutor", "ThreadExecutor"]


def _check_workers(max_workers: int | None) -> None:
    if max_workers is not None:
        check_count("max_workers", max_workers)  # also refuses 2.5, nan, True


class InlineExecutor:
    """Runs each callable at once in the calling thread; the future is already done."""

    def __init__(self) -> None:
        self._shut = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        if self._shut:
            raise RuntimeError("cannot submit to an executor that was shut down")
        future: cf.Future[Any] = cf.Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        return future

    def shutdown(self, wait: bool = True) -> None:
        self._shut = True


class ThreadExecutor:
    """A thread pool (``max_workers`` threads; Python's default when None)."""

    def __init__(self, max_workers: int | None = None, *, name: str = "crucible") -> None:
        _check_workers(max_workers)
        self._pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)


class ProcessExecutor:
    """A pool of worker processes started with ``start_method`` (``spawn`` by default).

    ``spawn`` is the default because the runtime has threads (event
    delivery, heartbeats) and forking a threaded process can deadlock.
    """

    def __init__(self, max_workers: int | None = None, *, start_method: str = "spawn") -> None:
        _check_workers(max_workers)
        if start_method not in multiprocessing.get_all_start_methods():
            raise ConfigError(
                f"start method {start_method!r} is not available here",
                hint=f"use one of: {', '.join(multiprocessing.get_all_start_methods())}",
            )
        self._pool = cf.ProcessPoolExecutor(
            max_workers=max_workers, mp_context=multiprocessing.get_context(start_method)
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

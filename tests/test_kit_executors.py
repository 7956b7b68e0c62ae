"""check_executor passes core's executors and names the rule each broken one breaks."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable
from typing import Any

import pytest

from crucible_core.pipeline.executors import InlineExecutor, ProcessExecutor, ThreadExecutor
from crucible_core.testing import ConformanceError, check_executor


@pytest.mark.parametrize(
    "make",
    [InlineExecutor, lambda: ThreadExecutor(max_workers=2), lambda: ProcessExecutor(max_workers=1)],
    ids=["inline", "thread", "process"],
)
def test_core_executors_pass(make: Callable[[], Any]) -> None:
    check_executor(make(), timeout=60)


class _Base:
    """Runs work inline, like InlineExecutor, with one rule broken by a subclass."""

    def __init__(self) -> None:
        self.shut = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        if self.shut:
            raise RuntimeError("shut down")
        future: cf.Future[Any] = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True) -> None:
        self.shut = True


class _ReturnsValue(_Base):
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


class _DropsKwargs(_Base):
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        return super().submit(fn, *args)


class _SharesOneFuture(_Base):
    first: Any = None

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        if self.first is None:
            self.first = super().submit(fn, *args, **kwargs)
        return self.first


class _RaisesAtSubmit(_Base):
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        future: cf.Future[Any] = cf.Future()
        future.set_result(fn(*args, **kwargs))
        return future


class _WrapsErrors(_Base):
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        future: cf.Future[Any] = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(RuntimeError(f"worker failed: {exc}"))
        return future


class _LosesRetryable(_Base):
    """Re-raises the error rebuilt from its message, as a naive pickling would."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        future: cf.Future[Any] = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(type(exc)(str(exc)))
        return future


class _AcceptsAfterShutdown(_Base):
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        if self.shut:
            return cf.Future()  # never runs
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize(
    ("executor", "message"),
    [
        (_ReturnsValue(), "must return a Future"),
        (_DropsKwargs(), "resolved to \\(5, 2\\); fn returns \\(20, 2\\)"),
        (_SharesOneFuture(), "each future must carry its own result"),
        (_RaisesAtSubmit(), "raised BackendError.*raised by future.result\\(\\), not by submit"),
        (_WrapsErrors(), "fn raises BackendError, but future.result\\(\\) raised RuntimeError"),
        (_LosesRetryable(), "retryable=True\\) came back with retryable=False"),
        (_AcceptsAfterShutdown(), "submit after shutdown\\(wait=True\\) must raise"),
        (object(), "an executor needs submit"),
    ],
)
def test_broken_executors_fail_with_the_rule(executor: Any, message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_executor(executor)
    if isinstance(executor, _Base):
        assert executor.shut  # a failed check still shuts the executor down


class _ShutdownHangs(_Base):
    release = threading.Event()

    def shutdown(self, wait: bool = True) -> None:
        self.release.wait(5.0)


def test_a_hanging_shutdown_fails_within_the_timeout() -> None:
    try:
        with pytest.raises(ConformanceError, match=r"shutdown\(wait=True\) did not return"):
            check_executor(_ShutdownHangs(), timeout=0.5)
    finally:
        _ShutdownHangs.release.set()

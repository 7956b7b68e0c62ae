from concurrent.futures import Future
from typing import Any


class InlineExecutor:
    """Runs each function at once in the caller's thread: handy for debugging a pipeline."""

    def __init__(self, **options: Any) -> None:
        self._closed = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> "Future[Any]":
        if self._closed:
            raise RuntimeError("acme-inline: submit after shutdown")
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # the caller reads it from future.result()
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True

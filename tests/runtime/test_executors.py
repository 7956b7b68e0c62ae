"""The built-in executors, resolved through the registration hooks."""

from __future__ import annotations

import os
import threading

import pytest

from crucible_core.contracts import Executor
from crucible_core.errors import ConfigError
from crucible_core.pipeline.executors import InlineExecutor, ProcessExecutor, ThreadExecutor
from crucible_core.plugins import PluginHost


def test_registered_under_their_names(host: PluginHost) -> None:
    assert set(host.registrations("executor")) >= {"inline", "thread", "process"}
    ex = host.create("executor", "thread", max_workers=2)
    assert isinstance(ex, ThreadExecutor)
    assert isinstance(ex, Executor)
    ex.shutdown()
    assert host.get("artifact_store", "local").load().__name__ == "LocalArtifactStore"


def test_inline_runs_before_submit_returns() -> None:
    ex = InlineExecutor()
    caller = threading.get_ident()
    fut = ex.submit(threading.get_ident)
    assert fut.done()
    assert fut.result() == caller
    bad = ex.submit(int, "x")
    assert isinstance(bad.exception(), ValueError)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(int)


def test_thread_executor_runs_concurrently() -> None:
    barrier = threading.Barrier(3, timeout=5)
    ex = ThreadExecutor(max_workers=3)
    futures = [ex.submit(barrier.wait) for _ in range(3)]
    assert sorted(f.result() for f in futures) == [0, 1, 2]
    ex.shutdown()


def test_process_executor_runs_in_another_process() -> None:
    ex = ProcessExecutor(max_workers=1)
    try:
        assert ex.submit(os.getpid).result(timeout=60) != os.getpid()
    finally:
        ex.shutdown()


def test_bad_options() -> None:
    with pytest.raises(ConfigError):
        ThreadExecutor(max_workers=0)
    for bad in (2.5, float("nan"), True, -1):
        with pytest.raises(ConfigError, match=r"^max_workers must be a whole number >= 1"):
            ThreadExecutor(max_workers=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=r"^max_workers must be a whole number >= 1"):
            ProcessExecutor(max_workers=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not available"):
        ProcessExecutor(start_method="teleport")


def test_cancel_flag_reason_parent_and_wait() -> None:
    import time

    from crucible_core.contracts import CancelToken
    from crucible_core.pipeline.cancel import CancelFlag

    parent = CancelFlag()
    child = CancelFlag(parent=parent)
    assert isinstance(child, CancelToken)
    assert not child.wait(0.01)
    start = time.monotonic()
    threading.Timer(0.05, parent.set, args=("timeout",)).start()
    assert child.wait(5)
    assert time.monotonic() - start < 2
    assert child.is_set()
    assert child.reason is None
    assert parent.reason == "timeout"
    parent.set("again")
    assert parent.reason == "timeout"
    own = CancelFlag()
    threading.Timer(0.02, own.set).start()
    assert own.wait(5)
    assert own.reason == "cancelled"

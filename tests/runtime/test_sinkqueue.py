"""crucible_core.records.sinkqueue: the bounded queue every sink plugin puts between the bus
and its exporter. The slow consumer is a real blocked thread (a handler waiting on an
Event), not a mock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.records.events import read_telemetry
from crucible_core.records.sinkqueue import DropLedger, SinkQueue, bounded_call, record_warning


def test_items_are_handled_in_order_and_flush_waits_for_them() -> None:
    seen: list[int] = []
    q = SinkQueue[int](seen.append, name="t-order", maxsize=100)
    for i in range(50):
        assert q.offer(i)
    assert q.flush(5)
    assert seen == list(range(50))
    assert (q.handled, q.dropped, q.errors) == (50, 0, 0)
    assert q.close(5)


def test_a_hanging_consumer_never_blocks_the_producer_and_drops_are_counted() -> None:
    release = threading.Event()
    dropped: list[int] = []

    def hang(item: int) -> None:
        release.wait(30)

    q = SinkQueue[int](hang, name="t-hang", maxsize=3, on_drop=dropped.append)
    began = time.monotonic()
    results = [q.offer(i) for i in range(100)]
    took = time.monotonic() - began
    assert took < 1.0  # 100 offers against a consumer stuck for 30 s
    # One item is taken by the stuck worker, three wait: the rest are dropped.
    assert results.count(True) <= 4
    assert q.dropped == results.count(False) == len(dropped) >= 96
    assert not q.flush(0.2)  # the worker cannot get there
    closing = time.monotonic()
    assert not q.close(0.3)
    assert time.monotonic() - closing < 2.0
    release.set()


def test_after_close_items_are_dropped_and_close_is_idempotent() -> None:
    seen: list[str] = []
    q = SinkQueue[str](seen.append, name="t-close", maxsize=10)
    q.offer("a")
    finals: list[str] = []
    assert q.close(5, final=lambda: finals.append(f"after {len(seen)}"))
    assert finals == ["after 1"]  # the final call ran on the worker after the queue
    assert q.closed
    assert not q.offer("b")
    assert q.dropped == 1
    assert q.close(5)
    assert not q.call(lambda: None, 1)


def test_a_handler_error_is_counted_logged_once_per_kind_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[int] = []

    def handle(item: int) -> None:
        if item % 2:
            raise ValueError(f"odd {item}")
        seen.append(item)

    q = SinkQueue[int](handle, name="t-err", maxsize=100)
    with caplog.at_level("WARNING", logger="crucible.sinkqueue"):
        for i in range(10):
            q.offer(i)
        assert q.flush(5)
    assert seen == [0, 2, 4, 6, 8]
    assert (q.handled, q.errors) == (5, 5)
    assert len([r for r in caplog.records if "odd" in r.getMessage()]) == 1
    q.close(5)


def test_an_on_drop_that_raises_does_not_reach_the_producer() -> None:
    release = threading.Event()

    def boom(item: int) -> None:
        raise RuntimeError("recording failed")

    q = SinkQueue[int](lambda _: release.wait(30), name="t-drop", maxsize=1, on_drop=boom)
    for i in range(5):
        q.offer(i)  # must not raise
    assert q.dropped >= 3
    release.set()
    assert q.close(5)


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        SinkQueue[int](print, name="t-bad", maxsize=0)


def test_bounded_call_gives_up_on_a_hang_and_survives_an_error() -> None:
    release = threading.Event()
    began = time.monotonic()
    assert not bounded_call(lambda: release.wait(30), 0.2, "t-bounded")
    assert time.monotonic() - began < 2.0
    release.set()

    def fail() -> None:
        raise RuntimeError("exporter gone")

    assert bounded_call(fail, 5, "t-fail")


def test_record_warning_appends_to_the_runs_telemetry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path))
    record_warning("sink.dropped", "run-1", sink="x", dropped=3, message="gap")
    [event] = list(read_telemetry("run-1"))
    assert event.kind == "sink.dropped"
    assert event.data == {"sink": "x", "dropped": 3, "message": "gap", "level": "warning"}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["offer", "flush"]), max_size=40), st.integers(1, 8))
def test_every_offer_is_either_handled_or_counted_as_dropped(ops: list[str], size: int) -> None:
    seen: list[int] = []
    q = SinkQueue[int](seen.append, name="t-prop", maxsize=size)
    accepted = 0
    for i, op in enumerate(ops):
        if op == "offer":
            accepted += q.offer(i)
        else:
            assert q.flush(5)
    assert q.close(5)
    offers = ops.count("offer")
    assert len(seen) == accepted == offers - q.dropped
    assert seen == sorted(seen)


def test_on_idle_runs_on_the_worker_once_per_quiet_spell() -> None:
    calls: list[tuple[str, int]] = []
    seen: list[int] = []
    q = SinkQueue[int](
        seen.append,
        name="t-idle",
        maxsize=10,
        on_idle=lambda: calls.append((threading.current_thread().name, len(seen))),
        idle_s=0.05,
    )
    q.offer(1)
    q.offer(2)
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # a long quiet spell: still one call
    assert calls == [("t-idle", 2)]
    q.offer(3)
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls[1] == ("t-idle", 3)
    assert q.close(5)


def test_after_close_gives_up_a_worker_that_comes_back_handles_nothing_more() -> None:
    release = threading.Event()
    seen: list[int] = []
    finals: list[str] = []

    def hang(item: int) -> None:
        release.wait(30)
        seen.append(item)

    q = SinkQueue[int](hang, name="t-abandon", maxsize=10)
    for i in range(5):
        q.offer(i)
    assert not q.close(0.2, final=lambda: finals.append("final"))
    release.set()  # the endpoint answers again: the item in hand completes, no more
    deadline = time.monotonic() + 5
    while q.abandoned < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [0]
    assert q.abandoned == 4
    assert finals == []  # the final call, queued behind them, is skipped too


def test_drop_ledger_warns_each_run_once_then_reports_its_total(
    crucible_home: Path,
) -> None:
    ledger = DropLedger("demo", queue_size=8)
    firsts = [ledger.count(job) for job in ("a", "a", "b", "", "a")]
    assert firsts == [True, False, True, True, False]
    assert ledger.by_job == {"a": 3, "b": 1, "": 1}
    ledger.warn("a", 1, "first drop")
    ledger.warn("", 1, "no run to write to")  # events of no job have no telemetry file
    ledger.report(lambda n: f"{n} dropped")
    lines = [(e.data["dropped"], e.data["message"]) for e in read_telemetry("a")]
    assert lines == [(1, "first drop"), (3, "3 dropped")]
    assert [e.data["sink"] for e in read_telemetry("b")] == ["demo"]
    assert not (crucible_home / "runs" / "").joinpath("telemetry.jsonl").exists()

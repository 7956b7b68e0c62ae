"""The event bus: JSONL sink, bounded non-blocking subscribers, plugin forwarding."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from crucible_core.hookspecs import hookimpl
from crucible_core.plugins import PluginHost
from crucible_core.records.events import TELEMETRY_FILE, Event, EventBus, read_telemetry
from crucible_core.records.paths import run_dir


def test_every_event_is_appended_and_flushed_at_once(crucible_home: Path) -> None:
    bus = EventBus()
    bus.emit("job.state", job_id="j1", status="running")
    bus.emit("train.step", job_id="j1", step=1, epoch=0.5, loss=2.5, lr=0.1, note="warm")
    # Read while the bus still holds the file open: flushed per event.
    lines = (run_dir("j1") / TELEMETRY_FILE).read_bytes().splitlines()
    assert len(lines) == 2
    first = msgspec.json.decode(lines[0])
    assert first["kind"] == "job.state"
    assert first["data"] == {"status": "running"}
    step = msgspec.json.decode(lines[1])
    assert step["step"] == 1
    assert step["epoch"] == 0.5
    assert step["data"] == {"loss": 2.5, "metrics": {"lr": 0.1}, "note": "warm"}
    bus.close()
    events = list(read_telemetry("j1"))
    assert [e.kind for e in events] == ["job.state", "train.step"]
    assert isinstance(events[0], Event)


def test_normalized_train_step_without_loss(crucible_home: Path) -> None:
    with EventBus() as bus:
        e = bus.emit("train.step", job_id="j", step=3, metrics={"acc": 1.0}, tokens=10)
    assert e.data == {"loss": None, "metrics": {"acc": 1.0, "tokens": 10}}


def test_unserialisable_data_does_not_fail_the_producer(crucible_home: Path) -> None:
    with EventBus() as bus:
        bus.emit("custom.thing", job_id="j", obj=object())
    (event,) = read_telemetry("j")
    assert event.data["obj"].startswith("<object object")


def test_torn_last_line_is_skipped(crucible_home: Path) -> None:
    with EventBus() as bus:
        bus.emit("a.b", job_id="j")
    with open(run_dir("j") / TELEMETRY_FILE, "ab") as fh:
        fh.write(b'{"kind": "half')
    assert [e.kind for e in read_telemetry("j")] == ["a.b"]


def test_subscribers_receive_events_in_order(crucible_home: Path) -> None:
    got: list[int] = []
    done = threading.Event()

    def sub(e: Event) -> None:
        got.append(e.step or 0)
        if e.step == 99:
            done.set()

    with EventBus(sink=False) as bus:
        bus.subscribe(sub)
        for i in range(100):
            bus.emit("train.step", job_id="j", step=i, loss=1.0)
        assert done.wait(5)
    assert got == list(range(100))


def test_slow_subscriber_is_dropped_and_producer_never_blocks(crucible_home: Path) -> None:
    release = threading.Event()
    fast: list[Event] = []

    def slow(e: Event) -> None:
        release.wait(10)

    with EventBus() as bus:
        s = bus.subscribe(slow, maxsize=5, name="slowpoke")
        bus.subscribe(fast.append, maxsize=10_000, name="fast")
        start = time.perf_counter()
        for i in range(200):
            bus.emit("train.step", job_id="j", step=i, loss=0.0)
        elapsed = time.perf_counter() - start
        release.set()
        bus.drain()
        assert s.dropped
        assert s not in bus.subscribers
    assert elapsed < 2.0
    warnings = [e for e in read_telemetry("j") if e.kind == "bus.subscriber_dropped"]
    assert len(warnings) == 1
    assert warnings[0].data["subscriber"] == "slowpoke"
    assert warnings[0].data["maxsize"] == 5
    assert [e.kind for e in fast].count("bus.subscriber_dropped") == 1
    assert len([e for e in fast if e.kind == "train.step"]) == 200


def test_raising_subscriber_is_kept(crucible_home: Path) -> None:
    def bad(e: Event) -> None:
        raise RuntimeError("boom")

    with EventBus(sink=False) as bus:
        s = bus.subscribe(bad)
        for _ in range(3):
            bus.emit("x.y", job_id="j")
        bus.drain()
        time.sleep(0.05)
        assert s.errors == 3
        assert not s.dropped


def test_plugin_on_event_hook_receives_events(crucible_home: Path, host: PluginHost) -> None:
    seen: list[str] = []
    got = threading.Event()

    class Observer:
        @hookimpl
        def on_event(self, event: Any) -> None:
            seen.append(event.kind)
            got.set()

    host.add_plugin(Observer(), name="observer")
    with EventBus(host=host) as bus:
        bus.emit("stage.start", job_id="j", stage="s")
        assert got.wait(5)
    assert seen == ["stage.start"]


def test_bad_job_id_is_refused(crucible_home: Path) -> None:
    from crucible_core.errors import ConfigError

    with EventBus() as bus, pytest.raises(ConfigError, match="cannot name a run directory"):
        bus.emit("x.y", job_id="../escape")


def test_progress_subscriber_shows_step_total_and_loss(crucible_home: Path) -> None:
    from rich.console import Console

    from crucible_core.cli.progress import ProgressSubscriber

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    with ProgressSubscriber(console=console) as progress:
        progress(Event(kind="train.start", job_id="j9", ts=0, data={"total_steps": 40}))
        progress(Event(kind="job.state", job_id="j9", ts=0, data={"status": "running"}))
        progress(Event(kind="stage.start", job_id="j9", ts=0, data={"stage": "train"}))
        progress(Event(kind="train.step", job_id="j9", ts=0, step=12, data={"loss": 0.12345}))
    text = out.getvalue()
    assert "12/40" in text
    assert "0.1235" in text
    assert "j9" in text


def test_drain_waits_for_callbacks_to_finish_not_just_for_the_queue(crucible_home: Path) -> None:
    """A subscriber busy with the last event it took has not handled it yet: drain waits."""
    handled: list[int] = []

    def slow(event: Event) -> None:
        time.sleep(0.2)
        handled.append(event.step or 0)

    with EventBus(sink=False) as bus:
        bus.subscribe(slow, name="slow")
        for step in range(3):
            bus.emit("train.step", job_id="d", step=step, loss=1.0)
        t0 = time.monotonic()
        bus.drain(timeout=5)
        assert handled == [0, 1, 2]
        assert time.monotonic() - t0 >= 0.2  # it really waited for the callbacks
        bus.drain(timeout=5)  # idle: returns at once


def test_a_raising_on_event_is_logged_once_and_keeps_receiving(
    crucible_home: Path, host: PluginHost, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    class Broken:
        @hookimpl
        def on_event(self, event: Any) -> None:
            calls.append(event.kind)
            raise RuntimeError("sink down")

    host.add_plugin(Broken(), name="broken-sink")
    with caplog.at_level("WARNING", logger="crucible.plugins"), EventBus(host=host) as bus:
        for step in range(3):
            bus.emit("train.step", job_id="j", step=step, loss=1.0)
        bus.drain()
    assert len(calls) == 3  # still delivered after failing
    assert host.event_errors == {"broken-sink": 3}
    logged = [r for r in caplog.records if "broken-sink" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert "'train.step'" in logged[0].getMessage()

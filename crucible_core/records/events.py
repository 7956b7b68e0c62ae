"""The one event bus: every runtime event, persisted and fanned out without blocking.

An :class:`Event` is ``(kind, job_id, ts, step, epoch, data)``; kinds are
dotted names: ``job.state``, ``train.start`` (``total_steps``),
``train.step``, ``train.checkpoint``, ``eval.metric``, ``run.start``,
``run.end`` (a pipeline run's frame and final status), ``stage.start``,
``stage.end``, ``bus.subscriber_dropped``, and whatever plugins add
(``sample.completed``, ``hedge.fired``...).

Normalized payload: for ``train.step`` and ``eval.metric`` the data always
has ``loss`` (float or None) and ``metrics`` (name -> number); numeric
keyword arguments other than ``loss`` are folded into ``metrics``. Other
kinds carry their keyword arguments as given.

:meth:`EventBus.emit` does three things on the producer's thread, none of
which can block it:

1. **JSONL sink.** The event is appended to
   ``$CRUCIBLE_HOME/runs/<job_id>/telemetry.jsonl`` and flushed to the OS at
   once, so a crashed process loses nothing it emitted. fsync policy:
   ``fsync="close"`` (default) syncs a job's file when the job's telemetry is
   closed (:meth:`EventBus.close_job`, called by the worker when a job ends)
   and on :meth:`EventBus.close`; a machine crash may lose the tail of a
   running job's telemetry, never its state (that is in SQLite).
   ``fsync="event"`` syncs every event; ``"never"`` leaves it to the OS.
2. **Subscribers.** Each subscriber has a bounded queue and its own delivery
   thread. When a queue is full the subscriber is dropped, not waited for,
   and a ``bus.subscriber_dropped`` warning event is emitted in its place.
   A subscriber that raises is counted and kept.
3. **Plugins.** The pluggy ``on_event`` hook is one more subscriber
   (:meth:`PluginHost.emit <crucible_core.plugins.PluginHost.emit>`), so
   a slow plugin is dropped like any other.

Supported surface: :class:`Event`, :class:`EventBus`, :class:`Subscription`,
:func:`read_telemetry`, :data:`TELEMETRY_FILE`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal

import msgspec

from crucible_core.errors import ConfigError, NotFound
from crucible_core.records import paths

if TYPE_CHECKING:
    from crucible_core.plugins import PluginHost

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "TELEMETRY_FILE",
    "Event",
    "EventBus",
    "Subscription",
    "read_telemetry",
]

TELEMETRY_FILE: Final = "telemetry.jsonl"
DEFAULT_QUEUE_SIZE: Final = 1024
_NORMALIZED_KINDS: Final = frozenset({"train.step", "eval.metric"})
_MAX_OPEN_FILES: Final = 64


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One runtime event. ``ts`` is wall-clock seconds; ``data`` is JSON-ready."""

    kind: str
    job_id: str
    ts: float
    step: int | None = None
    epoch: float | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict[str, Any])


def _fallback(obj: Any) -> Any:
    # Telemetry must never fail the producer: unknown objects are written as text.
    return repr(obj)


_encoder = msgspec.json.Encoder(enc_hook=_fallback)
_decoder = msgspec.json.Decoder(Event)


def _normalize(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    if kind not in _NORMALIZED_KINDS:
        return data
    raw_metrics = data.pop("metrics", None)
    metrics: dict[str, Any] = dict(raw_metrics) if isinstance(raw_metrics, dict) else {}  # pyright: ignore[reportUnknownArgumentType]
    loss = data.pop("loss", None)
    rest: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics[key] = value
        else:
            rest[key] = value
    if loss is not None and not isinstance(loss, bool):
        with contextlib.suppress(TypeError, ValueError):
            loss = float(loss)
    return {"loss": loss, "metrics": metrics, **rest}


class Subscription:
    """A subscriber's queue and delivery thread. ``dropped`` tells whether it was cut off."""

    def __init__(
        self, bus: EventBus, callback: Callable[[Event], Any], maxsize: int, name: str
    ) -> None:
        self.name = name
        self.maxsize = maxsize
        self.dropped = False
        self.errors = 0
        self.delivered = 0
        self._bus = bus
        self._callback = callback
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=maxsize)
        self._pending = 0  # offered and not yet handled by the callback
        self._idle = threading.Condition()
        self._thread = threading.Thread(
            target=self._deliver, name=f"crucible-events-{name}", daemon=True
        )
        self._thread.start()

    def _offer(self, event: Event) -> bool:
        with self._idle:
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                return False
            self._pending += 1
        return True

    def _deliver(self) -> None:
        while True:
            event = self._queue.get()
            if event is None or self.dropped:
                with self._idle:
                    self._idle.notify_all()  # nobody will handle what is left
                return
            try:
                self._callback(event)
            except Exception:
                self.errors += 1
            else:
                self.delivered += 1
            finally:
                with self._idle:
                    self._pending -= 1
                    if self._pending == 0:
                        self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every event offered so far has been handled (or the subscriber was
        dropped or stopped); whether that happened within ``timeout`` seconds."""
        with self._idle:
            return self._idle.wait_for(
                lambda: self._pending == 0 or self.dropped or not self._thread.is_alive(),
                timeout,
            )

    def _stop(self, timeout: float | None) -> None:
        # The sentinel needs room; a dropped subscriber's thread exits on its own.
        if not self.dropped:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def cancel(self) -> None:
        """Stop delivering to this subscriber (events already queued are delivered first)."""
        self._bus.unsubscribe(self)


class _JsonlSink:
    """Appends events to each job's telemetry.jsonl (flushed per event)."""

    def __init__(self, fsync: Literal["close", "event", "never"]) -> None:
        self.fsync = fsync
        self._files: dict[str, IO[bytes]] = {}
        self._lock = threading.Lock()

    def write(self, event: Event, line: bytes) -> None:
        with self._lock:
            fh = self._files.get(event.job_id)
            if fh is None:
                if len(self._files) >= _MAX_OPEN_FILES:
                    oldest = next(iter(self._files))
                    self._close(oldest)
                directory = paths.run_dir(event.job_id)
                directory.mkdir(parents=True, exist_ok=True)
                fh = open(directory / TELEMETRY_FILE, "ab")  # noqa: SIM115
                self._files[event.job_id] = fh
            fh.write(line)
            fh.flush()
            if self.fsync == "event":
                os.fsync(fh.fileno())

    def _close(self, job_id: str) -> None:
        fh = self._files.pop(job_id, None)
        if fh is None:
            return
        with contextlib.suppress(OSError):
            fh.flush()
            if self.fsync != "never":
                os.fsync(fh.fileno())
        fh.close()

    def close(self, job_id: str | None = None) -> None:
        with self._lock:
            for key in [job_id] if job_id is not None else list(self._files):
                self._close(key)


class EventBus:
    """Emit events; persist them; deliver them to subscribers and plugins without blocking.

    ``sink=False`` keeps events in memory only (no telemetry files).
    ``host`` is the plugin host whose ``on_event`` implementations receive
    every event (default: none; the worker passes its host).
    """

    def __init__(
        self,
        *,
        sink: bool = True,
        fsync: Literal["close", "event", "never"] = "close",
        host: PluginHost | None = None,
        clock: Callable[[], float] = time.time,
        plugin_queue_size: int = 10_000,
    ) -> None:
        if fsync not in ("close", "event", "never"):
            raise ConfigError(
                f"fsync={fsync!r} is not an fsync policy", hint="use close, event or never"
            )
        self._sink = _JsonlSink(fsync) if sink else None
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._clock = clock
        self._closed = False
        if host is not None and host.pm.hook.on_event.get_hookimpls():
            self.subscribe(host.emit, maxsize=plugin_queue_size, name="plugins")

    # -- subscribers ----------------------------------------------------------

    def subscribe(
        self,
        callback: Callable[[Event], Any],
        *,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        name: str | None = None,
    ) -> Subscription:
        """Deliver every later event to ``callback`` on its own thread, through a bounded queue.

        If ``maxsize`` events are waiting when another arrives, the
        subscriber is dropped and a ``bus.subscriber_dropped`` event says so.
        """
        if maxsize < 1:
            raise ConfigError(f"maxsize must be >= 1, got {maxsize}")
        sub = Subscription(self, callback, maxsize, name or getattr(callback, "__name__", "sub"))
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription, *, timeout: float | None = 5.0) -> None:
        """Remove a subscriber after it has taken the events already queued for it."""
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
        sub._stop(timeout)  # pyright: ignore[reportPrivateUsage]

    @property
    def subscribers(self) -> list[Subscription]:
        """The live subscribers."""
        with self._lock:
            return list(self._subs)

    # -- emitting -------------------------------------------------------------

    def emit(
        self,
        kind: str,
        /,
        *,
        job_id: str,
        step: int | None = None,
        epoch: float | None = None,
        **data: Any,
    ) -> Event:
        """Record one event and hand it to every subscriber; never blocks on a subscriber.

        ``kind`` is positional-only, so ``data`` may itself hold a ``kind`` key.
        """
        if not kind or not isinstance(kind, str):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ConfigError(f"an event needs a kind, got {kind!r}")
        event = Event(
            kind=kind,
            job_id=job_id,
            ts=self._clock(),
            step=step,
            epoch=epoch,
            data=_normalize(kind, data),
        )
        self.publish(event)
        return event

    def publish(self, event: Event) -> None:
        """Persist and deliver an already built event (replays, other processes' events)."""
        if self._sink is not None and event.job_id:
            self._sink.write(event, _encoder.encode(event) + b"\n")
        with self._lock:
            subs = list(self._subs)
        dropped: list[Subscription] = []
        for sub in subs:
            if not sub._offer(event):  # pyright: ignore[reportPrivateUsage]
                dropped.append(sub)
        for sub in dropped:
            with self._lock:
                if sub not in self._subs:
                    continue
                self._subs.remove(sub)
            sub.dropped = True
            self.emit(
                "bus.subscriber_dropped",
                job_id=event.job_id,
                subscriber=sub.name,
                maxsize=sub.maxsize,
                while_delivering=event.kind,
                level="warning",
                message=f"subscriber {sub.name!r} fell {sub.maxsize} events behind and was dropped",
            )

    # -- closing --------------------------------------------------------------

    def close_job(self, job_id: str) -> None:
        """Flush, fsync (policy permitting) and close one job's telemetry file."""
        if self._sink is not None:
            self._sink.close(job_id)

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until every subscriber has handled what was queued for it (up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        for sub in self.subscribers:
            sub.wait_idle(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, stop subscriber threads and close every telemetry file."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            subs, self._subs = self._subs, []
        for sub in subs:
            sub._stop(timeout)  # pyright: ignore[reportPrivateUsage]
        if self._sink is not None:
            self._sink.close()

    def __enter__(self) -> EventBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_telemetry(job_id: str) -> Iterator[Event]:
    """The events of ``job_id`` from its telemetry.jsonl, in order (a torn last line is skipped)."""
    path: Path = paths.run_dir(job_id) / TELEMETRY_FILE
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise NotFound(
            f"no telemetry for job {job_id!r} ({path})",
            hint="the job has not emitted events yet, or CRUCIBLE_HOME points elsewhere",
        ) from None
    with fh:
        for line in fh:
            if not line.endswith(b"\n"):
                return
            try:
                yield _decoder.decode(line)
            except msgspec.DecodeError:
                continue

"""The MLflow writer process: a child that owns mlflow and the tracking store.

Why a process: MLflow's SQLite store costs about 100-150 us of CPU per metric
(SQLAlchemy ORM objects, the latest-metric bookkeeping, a commit per batch),
so a 9-metric training step cost ~1.4 ms of Python work. On a thread of the
training process that work holds the GIL the training loop needs (13 % of a
README main-job step, docs/benchmarks.md). In a child process it shares no
GIL, no import time (mlflow and SQLAlchemy load there, ~1.5 s) and no
memory with the run; the run's process only encodes each event it forwards
(a few microseconds) and writes it to a pipe.

Protocol (both ways: frames of a 4-byte big-endian length, one tag byte, a
msgpack body), parent -> child on stdin:

- ``i`` + ``[config, manifest_wait_s, batch_s]``: the first frame;
- ``e`` + an :class:`~crucible_core.records.events.Event`: handle it
  (:class:`~crucible_mlflow.track.Tracker`);
- ``f`` + ``n``: send every buffered metric, then acknowledge ``n``;
- ``c`` + ``n``: end open runs as KILLED, acknowledge ``n`` and exit.

child -> parent on stdout: ``a`` + ``[n, handled, errors]`` after each
read's events were handled (``n`` = 0) and for each ``f``/``c`` (``n`` as
sent); ``w`` + ``[logger, level, message]`` for each warning the child logs,
which the parent logs again under its own logging (the child's stderr is
``/dev/null``: it holds none of the run's pipes, so a run killed outright is
not waited for through its writer). End of input (the parent died) ends open
runs and exits; a second without input flushes the buffered metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import struct
import sys
import threading
from typing import IO, Any, Final

import msgspec

__all__ = ["FrameReader", "frame", "main"]

log = logging.getLogger("crucible_mlflow")

_HEADER: Final = struct.Struct(">I")
_IDLE_S: Final = 1.0
_NICE: Final = 10
_encoder = msgspec.msgpack.Encoder(enc_hook=repr)


def frame(tag: bytes, body: Any) -> bytes:
    """One frame: the length of ``tag`` + msgpack(``body``), the tag, the body."""
    payload = tag + _encoder.encode(body)
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into ``(tag, body bytes)`` frames as bytes arrive."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The frames completed by ``data`` (a partial frame waits for the rest)."""
        self._buf += data
        out: list[tuple[bytes, bytes]] = []
        pos = 0
        while len(self._buf) - pos >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf, pos)
            end = pos + _HEADER.size + size
            if len(self._buf) < end:
                break
            payload = bytes(self._buf[pos + _HEADER.size : end])
            out.append((payload[:1], payload[1:]))
            pos = end
        del self._buf[:pos]
        return out


class _Relay(logging.Handler):
    """Warnings of the child, as ``w`` frames to the parent."""

    def __init__(self, send: Any) -> None:
        super().__init__(logging.WARNING)
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # the parent is gone: nowhere to tell
            self._send(frame(b"w", [record.name, record.levelno, record.getMessage()]))


class _Writer:
    """The child's state: a Tracker and its counters."""

    def __init__(self, out: IO[bytes]) -> None:
        from crucible_core.records.events import Event

        self.out = out
        self._lock = threading.Lock()
        self.tracker: Any = None
        self.handled = 0
        self.errors = 0
        self._kinds: set[str] = set()
        self._event = msgspec.msgpack.Decoder(Event)

    def send(self, data: bytes) -> None:
        with self._lock:  # library threads may log while the main thread acknowledges
            self.out.write(data)
            self.out.flush()

    def ack(self, n: int) -> None:
        self.send(frame(b"a", [n, self.handled, self.errors]))

    def guard(self, what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # counted, logged once per kind: the writer goes on
            self.errors += 1
            kind = type(exc).__name__
            if kind not in self._kinds:
                self._kinds.add(kind)
                log.warning("crucible-mlflow: %s failed: %s: %s", what, kind, exc)
            return
        if what == "an event":
            self.handled += 1

    def on_frame(self, tag: bytes, body: bytes) -> bool:
        """Act on one frame; False once the parent asked to close."""
        if tag == b"e":
            if self.tracker is not None:
                self.guard("an event", self.tracker.handle, self._event.decode(body))
        elif tag == b"i":
            from crucible_mlflow.config import MlflowConfig
            from crucible_mlflow.track import Tracker

            fields, manifest_wait_s, batch_s = msgspec.msgpack.decode(body)
            config = msgspec.convert(fields, MlflowConfig)
            self.tracker = Tracker(config, manifest_wait_s=manifest_wait_s, batch_s=batch_s)
        elif tag == b"f":
            if self.tracker is not None:
                self.guard("sending metrics", self.tracker.flush)
            self.ack(msgspec.msgpack.decode(body))
        elif tag == b"c":
            if self.tracker is not None:
                self.guard("ending runs", self.tracker.finish)
            self.ack(msgspec.msgpack.decode(body))
            return False
        return True

    def finish(self) -> None:
        if self.tracker is not None:
            self.guard("ending runs", self.tracker.finish)


def main(inp: IO[bytes] | None = None, out: IO[bytes] | None = None) -> int:
    """Serve the protocol on stdin/stdout until ``c`` or end of input."""
    fd = (inp or sys.stdin.buffer).fileno()
    # Background work: when cores are short the run's own threads go first.
    with contextlib.suppress(OSError):
        os.nice(_NICE)
    if out is None:
        # Frames own the real stdout; anything a library prints goes to stderr (/dev/null)
        # instead of corrupting the stream.
        out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    writer = _Writer(out)
    root = logging.getLogger()
    root.addHandler(_Relay(writer.send))
    root.setLevel(logging.WARNING)
    reader = FrameReader()
    quiet = False
    while True:
        ready, _, _ = select.select([fd], [], [], _IDLE_S)
        if not ready:
            if not quiet and writer.tracker is not None:
                writer.guard("sending metrics", writer.tracker.flush)
            quiet = True
            continue
        quiet = False
        data = os.read(fd, 1 << 16)
        if not data:  # the parent is gone
            writer.finish()
            return 0
        frames = reader.feed(data)
        for tag, body in frames:
            if not writer.on_frame(tag, body):
                return 0
        if any(tag == b"e" for tag, _ in frames):
            writer.ack(0)


if __name__ == "__main__":
    raise SystemExit(main())

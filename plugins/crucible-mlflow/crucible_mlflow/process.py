"""The run's side of the MLflow writer process (:mod:`crucible_mlflow.writer`).

:class:`WriterProcess` starts ``python -m crucible_mlflow.writer`` on first
use and forwards events to it; it is called from the sink's one worker
thread. Only the events the tracker reads are forwarded (:data:`FORWARDED`).

**Back-pressure.** At most ``window`` forwarded events may be unacknowledged
by the child; :meth:`WriterProcess.handle` waits for the child below that,
so a store that hangs stops the sink's worker, its queue fills, and new
events are dropped and counted there (the run never waits: the queue's
``offer`` never blocks). A pipe alone would buffer tens of kilobytes of
events without telling anyone.

**Ending.** :meth:`WriterProcess.close` asks the child to end open runs and
exit and waits until a deadline; :meth:`WriterProcess.kill` ends a child
that did not (a hanging store must not keep a finished process alive).
The child also exits on its own when its stdin closes (this process died).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import msgspec

from crucible_mlflow.config import MlflowConfig
from crucible_mlflow.writer import FrameReader, frame

if TYPE_CHECKING:
    from crucible_core.records.events import Event

__all__ = ["FORWARDED", "WriterGone", "WriterProcess"]

#: Event kinds the tracker reads; the others are not sent to the child.
FORWARDED: Final = frozenset(
    {"run.start", "run.end", "train.step", "eval.metric", "train.checkpoint", "job.state"}
)
_encoder = msgspec.msgpack.Encoder(enc_hook=repr)


class WriterGone(RuntimeError):
    """The writer process exited or could not be reached."""


def _pythonpath() -> str:
    """This process's import roots of crucible_core and crucible_mlflow, then PYTHONPATH."""
    import crucible_core

    roots = [str(Path(m.__file__ or "").resolve().parents[1]) for m in (crucible_core,)]
    roots.append(str(Path(__file__).resolve().parents[1]))
    if os.environ.get("PYTHONPATH"):
        roots.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(dict.fromkeys(roots))


class WriterProcess:
    """Events to the writer child, with acknowledgements and a bounded window."""

    def __init__(
        self,
        config: MlflowConfig,
        *,
        manifest_wait_s: float = 5.0,
        batch_s: float = 5.0,
        window: int = 1000,
    ) -> None:
        self.config = config
        self.manifest_wait_s = manifest_wait_s
        self.batch_s = batch_s
        self.window = max(window, 1)
        #: Events forwarded to the child.
        self.sent = 0
        #: Events the child handled / whose tracking calls raised (as last acknowledged).
        self.handled = 0
        self.errors = 0
        self._acked: set[int] = set()
        self._calls = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._gone = False

    # -- the child -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's process id (None before the first event)."""
        return None if self._proc is None else self._proc.pid

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": _pythonpath()}
        proc = subprocess.Popen(
            [sys.executable, "-m", "crucible_mlflow.writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its warnings come back as frames (writer module)
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal must not cut its last writes
        )
        assert proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(proc.stdout,), name="crucible-mlflow-acks", daemon=True
        )
        self._reader.start()
        self._proc = proc
        self._write(frame(b"i", [asdict(self.config), self.manifest_wait_s, self.batch_s]))
        return proc

    def _read(self, out: IO[bytes]) -> None:
        reader = FrameReader()
        try:
            while data := out.read1(1 << 16):  # pyright: ignore[reportAttributeAccessIssue]
                for tag, body in reader.feed(data):  # pyright: ignore[reportUnknownArgumentType]
                    if tag == b"w":
                        name, level, message = msgspec.msgpack.decode(body)
                        logging.getLogger(name).log(level, "%s (MLflow writer)", message)
                        continue
                    if tag != b"a":
                        continue
                    n, handled, errors = msgspec.msgpack.decode(body)
                    with self._cond:
                        self.handled, self.errors = handled, errors
                        if n:
                            self._acked.add(n)
                        self._cond.notify_all()
        finally:
            with self._cond:
                self._gone = True
                self._cond.notify_all()

    def _write(self, data: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or self._gone:
            raise WriterGone("the MLflow writer process is not running")
        try:
            proc.stdin.write(data)
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise WriterGone(f"the MLflow writer process is gone: {exc}") from None

    def _push(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            try:
                proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError) as exc:
                raise WriterGone(f"the MLflow writer process is gone: {exc}") from None

    # -- the sink's worker thread ----------------------------------------------------

    def handle(self, event: Event) -> None:
        """Forward ``event`` (if the tracker reads its kind), within the window."""
        if event.kind not in FORWARDED:
            return
        if self._proc is None:
            self._start()
        with self._cond:
            if self.sent - self.handled - self.errors >= self.window:
                self._push()
                while self.sent - self.handled - self.errors >= self.window and not self._gone:
                    self._cond.wait(0.5)
        self._write(frame(b"e", event))
        self.sent += 1

    def idle(self) -> None:
        """The sink's queue is quiet: hand the child what is buffered in the pipe."""
        self._push()

    def _call(self, tag: bytes, timeout: float) -> bool:
        if self._proc is None:
            return True
        self._calls += 1
        n = self._calls
        deadline = time.monotonic() + timeout
        self._write(frame(tag, n))
        self._push()
        with self._cond:
            while n not in self._acked and not self._gone:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return n in self._acked

    def flush(self, timeout: float) -> bool:
        """Every forwarded event handled and every metric sent; True if within ``timeout``."""
        return self._call(b"f", timeout)

    def close(self, timeout: float) -> bool:
        """End open runs (KILLED), stop the child; True if it did so within ``timeout``."""
        if self._proc is None:
            return True
        deadline = time.monotonic() + timeout
        try:
            done = self._call(b"c", timeout)
        except WriterGone:
            done = False
        if done:
            try:
                self._proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                done = False
        if done:
            self._release()
        else:
            self.kill()
        return done

    def kill(self) -> None:
        """End the child now (what it had not written is lost; telemetry.jsonl has it)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self._release()

    def _release(self) -> None:
        """Close the pipes of a child that has exited (after its last acknowledgement)."""
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if self._reader is not None:
            self._reader.join(5)
        if proc.stdout is not None and (self._reader is None or not self._reader.is_alive()):
            proc.stdout.close()

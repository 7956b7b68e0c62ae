"""The scheduler worker processes of ``crucible serve --workers N``, supervised.

:class:`WorkerGroup` starts N :mod:`crucible_server.workerproc` processes
(one job slot each) as children of the API process, so they share its
process group: ``kill -TERM -PGID`` or Ctrl-C reaches all of them, and the
API never shares a GIL with a training loop. A worker that exits while the
group is not stopping (a crash, an OOM kill) is restarted, after a back-off
that doubles up to 30 s when it keeps dying within a minute; its job was
either released (it drained) or is requeued when its lease lapses.

:meth:`~WorkerGroup.stop` sends each worker ``drain`` on its stdin
(``stop(now=True)``: ``now``); :meth:`~WorkerGroup.join` waits for them,
killing any still alive ``drain_timeout_s + grace_s`` after the stop.
If the API process dies outright, each worker's stdin closes and it drains
on its own (see :mod:`crucible_server.workerproc`): nothing is orphaned.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import IO

__all__ = ["WorkerGroup"]


class _Child:
    def __init__(self, proc: subprocess.Popen[bytes], started: float) -> None:
        self.proc = proc
        self.started = started


class WorkerGroup:
    """N supervised worker processes (module docstring)."""

    def __init__(
        self,
        n: int,
        *,
        lease_s: float = 30.0,
        drain_timeout_s: float = 30.0,
        grace_s: float = 10.0,
        env: dict[str, str] | None = None,
        log: IO[str] | None = None,
    ) -> None:
        self.n = n
        self.lease_s = lease_s
        self.drain_timeout_s = drain_timeout_s
        self.grace_s = grace_s
        self._env = env
        self._log = log if log is not None else sys.stderr
        self._children: list[_Child | None] = [None] * n
        self._backoff = [1.0] * n
        self._lock = threading.Lock()
        self._stops = 0
        self._stopped_at: float | None = None
        self._done = threading.Event()
        self._monitor: threading.Thread | None = None
        self.restarts = 0

    def _spawn(self, slot: int) -> None:
        cmd = [
            sys.executable,
            "-m",
            "crucible_server.workerproc",
            "--lease",
            repr(self.lease_s),
            "--drain-timeout",
            repr(self.drain_timeout_s),
        ]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=self._env)
        self._children[slot] = _Child(proc, time.monotonic())

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids."""
        with self._lock:
            return [c.proc.pid for c in self._children if c is not None and c.proc.poll() is None]

    def start(self) -> WorkerGroup:
        """Start the workers and the thread that restarts them."""
        with self._lock:
            for slot in range(self.n):
                self._spawn(slot)
        self._monitor = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._monitor.start()
        return self

    def _watch(self) -> None:
        due: dict[int, float] = {}
        while True:
            with self._lock:
                stopping = self._stops > 0
                alive = 0
                for slot, child in enumerate(self._children):
                    if child is None:
                        if not stopping and time.monotonic() >= due.get(slot, 0.0):
                            self._spawn(slot)
                            new = self._children[slot]
                            assert new is not None
                            self._log.write(
                                f"crucible serve: worker restarted as pid {new.proc.pid}\n"
                            )
                            self._log.flush()
                            alive += 1
                        continue
                    code = child.proc.poll()
                    if code is None:
                        alive += 1
                        if stopping and self._overdue():
                            child.proc.kill()
                        continue
                    self._children[slot] = None
                    if stopping:
                        continue
                    quick = time.monotonic() - child.started < 60.0
                    self._backoff[slot] = min(30.0, self._backoff[slot] * 2) if quick else 1.0
                    due[slot] = time.monotonic() + self._backoff[slot]
                    self.restarts += 1
                    self._log.write(
                        f"crucible serve: worker pid {child.proc.pid} exited ({code}), "
                        f"restarting in {self._backoff[slot]:g} s\n"
                    )
                    self._log.flush()
                    alive += 1  # will be
                if stopping and alive == 0:
                    self._done.set()
                    return
            time.sleep(0.1)

    def _overdue(self) -> bool:
        return (
            self._stopped_at is not None
            and time.monotonic() - self._stopped_at > self.drain_timeout_s + self.grace_s
        )

    def stop(self, *, now: bool = False) -> None:
        """Drain every worker (non-blocking, idempotent); ``now``: stop their jobs at once."""
        with self._lock:
            self._stops += 1
            if self._stopped_at is None:
                self._stopped_at = time.monotonic()
            order = b"now\n" if now else b"drain\n"
            for child in self._children:
                if child is None or child.proc.poll() is not None or child.proc.stdin is None:
                    continue
                try:
                    child.proc.stdin.write(order)
                    child.proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every worker exited (True), at most ``timeout`` seconds."""
        if self._monitor is None:
            return True
        limit = timeout if timeout is not None else self.drain_timeout_s + self.grace_s + 10.0
        finished = self._done.wait(limit)
        with self._lock:
            for child in self._children:
                if child is not None:
                    if child.proc.stdin is not None:
                        child.proc.stdin.close()
                    if child.proc.poll() is None and not finished:
                        child.proc.kill()
                    child.proc.wait()
        return finished

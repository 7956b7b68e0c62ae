"""One writer per run directory: an exclusive ``flock`` on ``<run_dir>/.lock``.

Why: a training run writes its state, checkpoints and manifest into its run
directory; two writers (a retry started while a hung attempt still runs,
``crucible resume`` beside a worker running the same job) would interleave
and corrupt them. Every path that writes a training run takes this lock
first: the worker's ``training_run`` handler and ``crucible train`` /
``crucible resume`` (through :func:`crucible_core.runtime.training.run_training`).

Contract:

- :class:`RunDirLock` is a context manager; entering it creates the
  directory if needed and takes the lock without waiting. If another holder
  has it, :class:`~crucible_core.errors.Conflict` is raised naming the
  holder's pid (written into the lock file by whoever holds it).
- The lock belongs to the open file, not to the file's existence: the kernel
  drops it when the holder closes it or its process dies (even by
  ``kill -9``), so a lock file left behind never blocks anyone. The file is
  not deleted on release (deleting a locked path races with a new holder).
- It is not re-entrant: a second :class:`RunDirLock` on the same directory
  conflicts even in the same process (each opens its own file).
- POSIX only (``fcntl``), like the rest of the runtime's process handling.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Final

from crucible_core.errors import ConfigError, Conflict

__all__ = ["LOCK_FILE", "RunDirLock", "holder_pid"]

#: The lock file's name inside a run directory.
LOCK_FILE: Final = ".lock"


def holder_pid(run_dir: Path) -> int | None:
    """The pid written in ``run_dir``'s lock file (the last holder's), or None."""
    try:
        text = (run_dir / LOCK_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class RunDirLock:
    """Exclusive lock on ``run_dir`` for this process's lifetime of the ``with`` block."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise Conflict naming the pid that holds it."""
        if self._fd is not None:
            raise Conflict(f"{self.run_dir}: this lock object already holds the run directory")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: cannot create the run directory's lock file ({exc.strerror})",
                hint="check that the run directory is writable, or set CRUCIBLE_HOME",
                path=str(self.path),
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = holder_pid(self.run_dir)
            who = f"process {pid}" if pid is not None else "another process"
            raise Conflict(
                f"{self.run_dir}: the run directory is in use by {who}",
                hint="two writers would corrupt the run; wait for it to finish"
                + (f" or stop it (kill {pid})" if pid is not None else ""),
                path=str(self.run_dir),
                pid=pid,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

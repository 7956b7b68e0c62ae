"""The status of a run and who owns a running one.

A run's status is ``manifest.json``'s ``status``. It uses the job status
names (:data:`crucible_core.ir.work.JobStatus`) where they mean the same
thing, so ``crucible runs list`` and ``crucible jobs list`` agree, plus two
that only a run has:

- ``running``: a process is working on it;
- ``succeeded``: trained, evaluated and saved;
- ``failed``: stopped by an error (a non-finite loss, a backend error...);
- ``cancelled``: cancelled on request (``crucible jobs cancel``);
- ``budget_exhausted``: stopped before exceeding a budget; a checkpoint was
  saved (``crucible resume RUN --max-...``);
- ``interrupted``: stopped by SIGINT/SIGTERM (or a worker shutting down) at a
  step boundary; a checkpoint was saved (``crucible resume RUN``);
- ``crashed``: never written, derived on read: the manifest says
  ``running`` but the process that owned the run is gone (killed, out of
  memory, power loss). It resumes from its last recorded checkpoint.

**Ownership.** The process running a run holds an exclusive ``flock`` on
``runs/<id>/.owner.lock`` for as long as it works on it (and records its pid
and host in the manifest's ``owner``). The kernel drops the lock when the
process dies, however it dies, so "``running`` and nobody holds the lock"
means crashed, with no heartbeat to tune and no pid-reuse trap. A second
process cannot take a run that is being worked on (:class:`RunLock` raises
:class:`~crucible_core.errors.Conflict` naming the holder's pid, which it
writes into the lock file): a worker's retry beside a hung attempt, or
``crucible resume`` beside a worker running the same job, would otherwise
interleave their writes and corrupt the run. Where ``fcntl`` is missing (Windows)
no lock is taken and a stale ``running`` is shown as is.
"""

from __future__ import annotations

import contextlib
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from crucible_core.errors import BudgetExhausted, Cancelled, ConfigError, Conflict

__all__ = [
    "INTERRUPT_REASONS",
    "LOCK_FILE",
    "RESUMABLE",
    "RunLock",
    "RunStatus",
    "effective_status",
    "holder_pid",
    "is_owned",
    "status_for",
]

RunStatus = Literal[
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "budget_exhausted",
    "interrupted",
    "crashed",
]

#: Statuses a run can be resumed from (it has, or may have, a checkpoint).
RESUMABLE: Final[frozenset[str]] = frozenset(
    {"interrupted", "crashed", "budget_exhausted", "cancelled", "failed"}
)

#: Cancellation reasons that mean "stopped from outside, resume later" rather than "cancelled".
INTERRUPT_REASONS: Final[frozenset[str]] = frozenset({"interrupted", "shutdown", "lease_lost"})

LOCK_FILE: Final = ".owner.lock"


def status_for(error: BaseException | None, *, cancel_reason: str | None = None) -> RunStatus:
    """The final status of a run that ended with ``error`` (None: it finished).

    ``cancel_reason`` is the reason of the run's cancellation flag, if it was
    set (``interrupted``, ``shutdown``, ``lease_lost``, ``timeout``,
    ``cancelled``).
    """
    if error is None:
        if cancel_reason is None:
            return "succeeded"
        return "interrupted" if cancel_reason in INTERRUPT_REASONS else "cancelled"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, BudgetExhausted):
        return "budget_exhausted"
    if isinstance(error, Cancelled):
        reason = error.details.get("reason") or cancel_reason
        if reason == "timeout":
            return "failed"  # the job fails with a (retryable) timeout too
        return "interrupted" if reason in INTERRUPT_REASONS else "cancelled"
    return "failed"


def _fcntl() -> Any:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    return fcntl


def holder_pid(run_dir: Path) -> int | None:
    """The pid written in ``run_dir``'s lock file by its holder (or last holder), or None."""
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class RunLock:
    """Exclusive ownership of a run directory while a process works on it: the one
    writer of its state, checkpoints and manifest.

    Use as a context manager around the work (or :meth:`acquire`/:meth:`release`).
    Entering creates the directory if needed, takes an exclusive ``flock`` on
    :data:`LOCK_FILE` without waiting and writes this process's pid into it;
    if another holder has it, :class:`~crucible_core.errors.Conflict` names that
    pid. The lock belongs to the open file: the kernel drops it when the holder
    closes it or dies (even by ``kill -9``), so a file left behind never blocks
    anyone, and it is not deleted on release (that would race with a new holder).
    Not re-entrant: a second ``RunLock`` on one directory conflicts even in the
    same process.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def owner(self) -> dict[str, Any]:
        """What this process records as the run's owner in the manifest."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(),
        }

    def acquire(self) -> None:
        """Take the lock or raise Conflict naming the pid that holds it."""
        fcntl = _fcntl()
        if fcntl is None:  # pragma: no cover - Windows: no ownership, as documented
            return
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
                f"run {self.run_dir.name!r} is being worked on by {who}",
                hint="two writers would corrupt the run; wait for it to finish, or stop it "
                f"(Ctrl-C{f' or kill {pid}' if pid is not None else ''}) and then "
                f"`crucible resume {self.run_dir.name}`",
                run=self.run_dir.name,
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

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def is_owned(run_dir: Path) -> bool | None:
    """Whether a live process holds the run's lock (None: cannot tell, or no lock file).

    Takes a shared lock for an instant; never blocks. A sink uses it to wait until
    the process working on a run has written its final manifest.
    """
    fcntl = _fcntl()
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None or not path.exists():
        return None
    try:
        fh = path.open("rb")
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False


def effective_status(run_dir: Path, manifest: dict[str, Any]) -> str | None:
    """The run's status as a user should see it: ``crashed`` for a dead owner.

    A run whose manifest says ``running`` is crashed when nobody holds its
    lock and the manifest still says ``running`` after that check (a run
    that just finished writes its final status before releasing the lock).
    """
    status = manifest.get("status")
    if status != "running" or is_owned(run_dir) is not False:
        return status if isinstance(status, str) else None
    from crucible_core.errors import CrucibleError
    from crucible_core.records.artifacts import read_manifest

    try:
        again = read_manifest(run_dir).get("status")
    except CrucibleError:
        return "crashed"
    return "crashed" if again == "running" else (again if isinstance(again, str) else None)

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
:class:`~crucible_core.errors.Conflict`). Where ``fcntl`` is missing (Windows)
no lock is taken and a stale ``running`` is shown as is.
"""

from __future__ import annotations

import contextlib
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal

from crucible_core.errors import BudgetExhausted, Cancelled, Conflict

__all__ = [
    "INTERRUPT_REASONS",
    "LOCK_FILE",
    "RESUMABLE",
    "RunLock",
    "RunStatus",
    "effective_status",
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


class RunLock:
    """Exclusive ownership of a run directory while a process works on it.

    Use as a context manager around the work. Entering raises
    :class:`~crucible_core.errors.Conflict` when another live process owns
    the run; leaving (or the process dying) releases it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._fh: IO[bytes] | None = None

    def owner(self) -> dict[str, Any]:
        """What this process records as the run's owner in the manifest."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(),
        }

    def __enter__(self) -> RunLock:
        fcntl = _fcntl()
        if fcntl is None:  # pragma: no cover - Windows
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.run_dir / LOCK_FILE, "ab")  # held until __exit__
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise Conflict(
                f"run {self.run_dir.name!r} is being worked on by another process",
                hint="wait for it to finish, or stop it (Ctrl-C) and then `crucible resume "
                f"{self.run_dir.name}`",
                run=self.run_dir.name,
            ) from None
        except BaseException:
            fh.close()
            raise
        self._fh = fh
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None


def _owned(run_dir: Path) -> bool | None:
    """Whether a live process holds the run's lock (None: cannot tell)."""
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
    if status != "running" or _owned(run_dir) is not False:
        return status if isinstance(status, str) else None
    from crucible_core.errors import CrucibleError
    from crucible_core.runtime.artifacts import read_manifest

    try:
        again = read_manifest(run_dir).get("status")
    except CrucibleError:
        return "crashed"
    return "crashed" if again == "running" else (again if isinstance(again, str) else None)

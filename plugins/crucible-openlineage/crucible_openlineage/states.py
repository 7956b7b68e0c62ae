"""Crucible events to OpenLineage run transitions: one START, then exactly one terminal.

Pure (no I/O, no openlineage import) so the guarantee is testable on its own.

A crucible run (one job id) is framed by the pipeline's ``run.start`` and
``run.end`` events. :class:`RunTracker` turns a stream of events into
:class:`Transition` values with these rules, per job id:

- ``run.start`` opens the run and gives ``START``. If the run was already
  open (its earlier execution never ended: the process lost it), that
  execution is first closed with ``ABORT``.
- The first terminal-ish event of an open run closes it with the state
  :func:`terminal_state` maps its status to: ``run.end`` (the pipeline's
  final status) or a ``job.state`` whose status is final (a worker job that
  ended without the pipeline saying so). Later terminal-ish events of a
  closed run are ignored: whatever a process emits, one terminal per START.
- ``train.checkpoint`` of an open run is remembered as an output, and the
  content hash of ``data.loaded`` (crucible-datasets) as the dataset's
  version when the run did not start with one.
- :meth:`RunTracker.close` ends every open run with ``ABORT`` (the process is
  going away and the runs did not say how they ended).

A run executed again (a worker's retry, ``crucible resume``) is a new
OpenLineage run: its ``run.start`` carries the next ``execution`` number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "FINAL_JOB_STATES",
    "RunTracker",
    "TerminalState",
    "Transition",
    "terminal_state",
]

TerminalState = Literal["COMPLETE", "FAIL", "ABORT"]

#: Run statuses (crucible_core.records.runstatus) and final job statuses -> terminal state.
_TERMINAL: Final[dict[str, TerminalState]] = {
    "succeeded": "COMPLETE",
    "failed": "FAIL",
    "dead": "FAIL",
    "cancelled": "ABORT",
    "interrupted": "ABORT",
    "budget_exhausted": "ABORT",
    "crashed": "ABORT",
}

#: ``job.state`` statuses that end a job (``queued`` / ``running`` do not).
FINAL_JOB_STATES: Final = frozenset(
    {"succeeded", "failed", "cancelled", "dead", "budget_exhausted"}
)


def terminal_state(status: str | None) -> TerminalState:
    """The OpenLineage terminal state of a run that ended with ``status``.

    ``succeeded`` -> COMPLETE; ``failed`` -> FAIL; stopped before the end
    (``cancelled``, ``interrupted``, ``budget_exhausted``, ``crashed``) ->
    ABORT. A status this table does not know is a FAIL: it did not succeed.
    """
    return _TERMINAL.get(status or "", "FAIL")


@dataclass(frozen=True)
class Transition:
    """One OpenLineage run event to send: ``state`` for crucible run ``job_id``.

    ``start`` is the ``run.start`` data of the run (facts for the event),
    ``end`` the data of the event that ended it (``{}`` for START and for a
    run aborted without one), ``checkpoints`` the ``train.checkpoint`` data
    seen while it ran, ``dataset_hash`` the hash ``data.loaded`` reported,
    ``ts`` the time of the event that caused it.
    """

    state: Literal["START", "COMPLETE", "FAIL", "ABORT"]
    job_id: str
    ts: float
    start: Mapping[str, Any]
    start_ts: float
    end: Mapping[str, Any] = field(default_factory=dict[str, Any])
    checkpoints: tuple[Mapping[str, Any], ...] = ()
    dataset_hash: str | None = None


@dataclass
class _Open:
    start: Mapping[str, Any]
    ts: float
    checkpoints: list[Mapping[str, Any]] = field(default_factory=list[Mapping[str, Any]])
    dataset_hash: str | None = None


class RunTracker:
    """Feeds events, yields transitions (see the module docstring). Not thread-safe:
    one delivery thread feeds it."""

    def __init__(self) -> None:
        self._open: dict[str, _Open] = {}

    @property
    def open_runs(self) -> list[str]:
        """Job ids of runs started and not yet ended."""
        return list(self._open)

    def feed(
        self, kind: str, job_id: str, ts: float, data: Mapping[str, Any], step: int | None = None
    ) -> list[Transition]:
        """The transitions event ``kind`` of ``job_id`` causes (often none)."""
        run = self._open.get(job_id)
        if kind == "run.start":
            out: list[Transition] = []
            if run is not None:
                out.append(self._end(job_id, "ABORT", ts, {"reason": "restarted"}))
            self._open[job_id] = _Open(start=dict(data), ts=ts)
            out.append(Transition("START", job_id, ts, dict(data), ts))
            return out
        if run is None:
            return []
        if kind == "run.end":
            return [self._end(job_id, terminal_state(data.get("status")), ts, data)]
        if kind == "job.state" and data.get("status") in FINAL_JOB_STATES:
            return [self._end(job_id, terminal_state(str(data.get("status"))), ts, data)]
        if kind == "train.checkpoint" and data.get("uri"):
            run.checkpoints.append({**data, "step": step})
        elif kind == "data.loaded" and data.get("dataset_hash"):
            run.dataset_hash = str(data["dataset_hash"])
        return []

    def close(self, ts: float) -> list[Transition]:
        """ABORT every open run (the process is ending)."""
        return [
            self._end(job_id, "ABORT", ts, {"reason": "process ended"})
            for job_id in list(self._open)
        ]

    def _end(
        self, job_id: str, state: TerminalState, ts: float, data: Mapping[str, Any]
    ) -> Transition:
        run = self._open.pop(job_id)
        return Transition(state, job_id, ts, run.start, run.ts, dict(data), tuple(run.checkpoints))

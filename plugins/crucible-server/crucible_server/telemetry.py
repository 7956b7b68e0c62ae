"""Reading a run's telemetry.jsonl by event number, for replay and live tailing.

An event's id is its 1-based line number in
``$CRUCIBLE_HOME/runs/<job_id>/telemetry.jsonl``: the file is append-only,
so ids are stable across reads and processes, and ``Last-Event-ID: N``
resumes at line ``N + 1`` with nothing lost or repeated. Only complete
lines (ending in ``\\n``) are consumed; a line still being written is read
on the next call. A line that does not decode still takes its number (so
numbering never shifts) and is skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from crucible_core.records.events import TELEMETRY_FILE, Event
from crucible_core.records.paths import run_dir
from crucible_server.filecache import StatCache

__all__ = ["ProgressCache", "TelemetryTail", "latest_progress"]

_decoder = msgspec.json.Decoder(Event)


class _Kind(msgspec.Struct):
    kind: str


_kind_decoder = msgspec.json.Decoder(_Kind)


@dataclass
class TelemetryTail:
    """Incremental reader of one job's telemetry, starting after event ``after``."""

    job_id: str
    after: int = 0
    _offset: int = 0
    _line: int = 0
    _path: Path = field(init=False)

    def __post_init__(self) -> None:
        self._path = run_dir(self.job_id) / TELEMETRY_FILE

    def read(self) -> list[tuple[int, Event]]:
        """The complete events written since the last call, as ``(id, event)``."""
        out: list[tuple[int, Event]] = []
        for n, raw in self._lines():
            try:
                out.append((n, _decoder.decode(raw)))
            except msgspec.DecodeError:
                continue
        return out

    def read_raw(self) -> list[tuple[int, str, str]]:
        """Like :meth:`read`, as ``(id, kind, JSON line)``: no re-encoding, for streaming.

        Cheap when nothing changed (one ``stat``), so many subscribers can poll.
        """
        out: list[tuple[int, str, str]] = []
        for n, raw in self._lines():
            try:
                kind = _kind_decoder.decode(raw).kind
            except msgspec.DecodeError:
                continue
            out.append((n, kind, raw.decode()))
        return out

    def _lines(self) -> list[tuple[int, bytes]]:
        try:
            size = os.stat(self._path).st_size
        except FileNotFoundError:
            return []
        if size <= self._offset:
            return []
        with open(self._path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(size - self._offset)
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        out: list[tuple[int, bytes]] = []
        for raw in data[: end + 1].splitlines():
            self._line += 1
            if self._line > self.after:
                out.append((self._line, raw))
        return out


def latest_progress(job_id: str, *, window: int = 65536) -> dict[str, Any]:
    """Step, total steps, latest loss/metrics and last checkpoint, from the telemetry's tail
    (its last ``window`` bytes)."""
    return _progress_of(os.path.join(run_dir(job_id), TELEMETRY_FILE), window=window, size=None)


def _progress_of(path: str, *, window: int, size: int | None) -> dict[str, Any]:
    """:func:`latest_progress` of the file at ``path``, up to byte ``size`` (else its end)."""
    try:
        with open(path, "rb") as fh:
            if size is None:
                size = fh.seek(0, 2)
            start = max(0, size - window)
            fh.seek(start)
            data = fh.read(size - start)
    except FileNotFoundError:
        return {}
    out: dict[str, Any] = {}
    total: int | None = None
    for raw in data.splitlines():
        try:
            ev = _decoder.decode(raw)
        except msgspec.DecodeError:
            continue  # the window's first line may be cut
        if ev.kind == "train.start" and isinstance(ev.data.get("total_steps"), int):
            total = ev.data["total_steps"]
        elif ev.kind == "train.step":
            out["step"] = ev.step
            out["loss"] = ev.data.get("loss")
            out["metrics"] = ev.data.get("metrics", {})
        elif ev.kind == "train.checkpoint":
            out["checkpoint"] = {"step": ev.step, **ev.data}
    if total is not None:
        out["total_steps"] = total
    return out


class ProgressCache:
    """:func:`latest_progress` per job, read again only when its telemetry changed
    (:class:`~crucible_server.filecache.StatCache`).

    The tail may no longer hold a long run's ``train.start`` (its total
    steps): the total is then taken from an earlier read or, while the file is
    short enough that it may still be coming, from the file's head. At most
    ``max_jobs`` jobs are remembered (the oldest entry goes first).
    """

    def __init__(self, *, window: int = 65536, max_jobs: int = 4096) -> None:
        self.window = window
        self._files = StatCache(self._read, max_files=max_jobs)

    def of(self, job_id: str) -> dict[str, Any]:
        """The job's progress (``{}`` before it has telemetry); do not modify it."""
        found = self._files.get(os.path.join(run_dir(job_id), TELEMETRY_FILE))
        return {} if found is None else found

    def _read(
        self, path: str, st: os.stat_result, previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        progress = _progress_of(path, window=self.window, size=st.st_size)
        if "total_steps" not in progress:
            total = previous.get("total_steps") if previous is not None else None
            if total is None and (previous is None or st.st_size < 65536):
                total = _total_from_head(path)
            if total is not None:
                progress["total_steps"] = total
        return progress


def _total_from_head(path: str) -> int | None:
    """``total_steps`` of the ``train.start`` event among the file's first 200 lines."""
    try:
        with open(path, "rb") as fh:
            for _, raw in zip(range(200), fh, strict=False):
                try:
                    ev = _decoder.decode(raw)
                except msgspec.DecodeError:
                    continue
                total = ev.data.get("total_steps") if ev.kind == "train.start" else None
                if isinstance(total, int):
                    return total
    except FileNotFoundError:
        return None
    return None

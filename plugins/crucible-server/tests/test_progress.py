"""ProgressCache: a job's progress from its telemetry, read again only when the file grew."""

from __future__ import annotations

from pathlib import Path

import msgspec
from crucible_server.telemetry import ProgressCache, latest_progress

from crucible_core.records.events import TELEMETRY_FILE, Event
from crucible_core.records.paths import run_dir


def _append(job_id: str, kind: str, step: int | None = None, **data: object) -> Path:
    path = run_dir(job_id) / TELEMETRY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    event = Event(kind=kind, job_id=job_id, ts=0.0, step=step, data=dict(data))
    with open(path, "ab") as fh:
        fh.write(msgspec.json.encode(event) + b"\n")
    return path


def test_no_telemetry_is_empty_progress(home: Path) -> None:
    assert ProgressCache().of("job-none") == {}


def test_progress_follows_the_file_and_is_reused_while_it_is_unchanged(home: Path) -> None:
    cache = ProgressCache()
    _append("job-a", "train.start", total_steps=4)
    _append("job-a", "train.step", step=1, loss=2.5)
    first = cache.of("job-a")
    assert first == {"step": 1, "loss": 2.5, "metrics": {}, "total_steps": 4}
    assert cache.of("job-a") is first  # unchanged file: no second read
    _append("job-a", "train.step", step=2, loss=1.5)
    second = cache.of("job-a")
    assert second is not first
    assert (second["step"], second["loss"]) == (2, 1.5)
    assert second == latest_progress("job-a")  # the same answer as an uncached read


def test_a_half_written_line_is_read_once_it_is_complete(home: Path) -> None:
    cache = ProgressCache()
    path = _append("job-h", "train.step", step=1, loss=3.0)
    line = msgspec.json.encode(Event(kind="train.step", job_id="job-h", ts=0, step=2, data={}))
    with open(path, "ab") as fh:
        fh.write(line[:10])
    assert cache.of("job-h")["step"] == 1
    with open(path, "ab") as fh:
        fh.write(line[10:] + b"\n")
    assert cache.of("job-h")["step"] == 2


def test_total_steps_of_a_long_run_comes_from_the_head(home: Path) -> None:
    """The tail window no longer holds train.start: the total is still known."""
    cache = ProgressCache(window=512)
    _append("job-l", "train.start", total_steps=100)
    for step in range(1, 40):
        _append("job-l", "train.step", step=step, loss=1.0 / step)
    assert "total_steps" not in latest_progress("job-l", window=512)
    got = cache.of("job-l")
    assert (got["step"], got["total_steps"]) == (39, 100)
    _append("job-l", "train.step", step=40, loss=0.01)
    assert cache.of("job-l")["total_steps"] == 100  # kept from the earlier read


def test_at_most_max_jobs_are_remembered(home: Path) -> None:
    cache = ProgressCache(max_jobs=2)
    for job in ("job-1", "job-2", "job-3"):
        _append(job, "train.step", step=1, loss=1.0)
    one, two = cache.of("job-1"), cache.of("job-2")
    cache.of("job-3")  # the oldest entry, job-1's, goes
    assert cache.of("job-2") is two
    again = cache.of("job-1")
    assert again is not one
    assert again == one


def test_stat_cache_derives_again_only_when_the_file_changed(tmp_path: Path) -> None:
    from crucible_server.filecache import StatCache

    calls: list[tuple[str, object]] = []

    def derive(path: str, st: object, previous: object) -> int:
        calls.append((path, previous))
        return len(Path(path).read_bytes())

    cache = StatCache(derive, max_files=1)
    f, g = tmp_path / "f", tmp_path / "g"
    assert cache.get(str(f)) is None  # no file, nothing derived
    f.write_bytes(b"abc")
    assert cache.get(str(f)) == 3
    assert cache.get(str(f)) == 3
    assert calls == [(str(f), None)]
    f.write_bytes(b"abcdef")  # changed: derived again, with the earlier value
    assert cache.get(str(f)) == 6
    assert calls[-1] == (str(f), 3)
    replaced = tmp_path / "f.new"
    replaced.write_bytes(b"xyz123")  # same size, a new inode (replaced by rename)
    replaced.replace(f)
    assert cache.get(str(f)) == 6
    assert len(calls) == 3
    g.write_bytes(b"z")
    assert cache.get(str(g)) == 1  # one file at most: f's entry goes
    assert cache.get(str(f)) == 6
    assert calls[-1] == (str(f), None)

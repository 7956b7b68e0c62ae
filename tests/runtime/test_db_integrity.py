"""A damaged crucible.db is detected (worker start, ``crucible doctor``) and repaired.

The damage is real: bytes are written over the root page of an index of a
real database file, which ordinary queries do not notice (they just see
wrong rows). ``PRAGMA quick_check`` does; ``crucible jobs recover`` rebuilds
the file from its tables, keeping every job.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from pathlib import Path

import pytest

from crucible_core.cli.main import main
from crucible_core.errors import ConfigError, exit_code_for
from crucible_core.ir.lineage import Edge
from crucible_core.ir.work import Job
from crucible_core.plugins import PluginHost
from crucible_core.queue.dbrepair import check_file, repair
from crucible_core.queue.scheduler import Scheduler
from crucible_core.queue.worker import Worker
from crucible_core.records.lineage import LineageRecorder
from crucible_core.records.paths import db_path

from . import jobs

JOBS = 2000
RUNNING = 300


def populated(path: Path) -> dict[str, int]:
    """A real queue database at ``path``: JOBS jobs, RUNNING of them claimed; its counts."""
    with Scheduler(path, sync="normal") as sched:
        sched.enqueue_many(
            [
                Job(kind="custom", payload={"target": f"{jobs.__name__}:echo", "args": {"i": i}})
                for i in range(JOBS)
            ]
        )
        for _ in range(RUNNING):
            sched.claim("w", lease_s=3600)
        counts = sched.counts()
    lineage = LineageRecorder(path)  # its tables share the file and must survive a repair
    lineage.add_edges([Edge(src="job-a", dst="dataset:mem", kind="consumes")])
    lineage.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    conn.close()
    return counts


def smash(path: Path, name: str) -> None:
    """Write random bytes over the b-tree root page of index or table ``name``."""
    conn = sqlite3.connect(path)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(path, "r+b") as fh:
        fh.seek((root - 1) * page + 100)
        fh.write(random.Random(7).randbytes(page - 200))


@pytest.fixture
def damaged(crucible_home: Path) -> tuple[Path, dict[str, int]]:
    crucible_home.mkdir(parents=True)
    path = db_path()
    counts = populated(path)
    smash(path, "jobs_queued")
    return path, counts


def test_quick_check_finds_a_damaged_index(damaged: tuple[Path, dict[str, int]]) -> None:
    path, _ = damaged
    problems = check_file(path)
    assert problems
    assert any("page" in p for p in problems)


def test_worker_refuses_to_start_on_a_damaged_database(
    damaged: tuple[Path, dict[str, int]], host: PluginHost
) -> None:
    path, _ = damaged
    sched = Scheduler(path, sync="normal")  # opening does not read the index
    with pytest.raises(ConfigError) as info:
        Worker(sched, host=host, poll_s=0.01).run(exit_when_idle=True)
    sched.close()
    assert str(path) in info.value.message
    assert "corrupt" in info.value.message
    assert info.value.hint is not None
    assert f"crucible jobs recover --db {path}" in info.value.hint
    assert exit_code_for(info.value) == 2


def test_cli_worker_exits_2_naming_the_file_and_the_fix(
    damaged: tuple[Path, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = damaged
    assert main(["worker", "--exit-when-idle", "--poll", "0.01"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: the database is corrupt (quick_check:" in err
    assert "crucible jobs recover" in err
    assert "Traceback" not in err


def test_doctor_reports_the_damage(
    damaged: tuple[Path, dict[str, int]], capsys: pytest.CaptureFixture[str], host: PluginHost
) -> None:
    path, _ = damaged
    assert main(["doctor", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    row = next(c for c in report["checks"] if c["check"] == "database")
    assert row["ok"] is False
    assert str(path) in row["detail"]
    assert "crucible jobs recover" in row["detail"]


def test_doctor_passes_a_sound_database(
    crucible_home: Path, capsys: pytest.CaptureFixture[str], host: PluginHost
) -> None:
    assert main(["doctor", "--json"]) == 0  # no database yet: not a failure
    report = json.loads(capsys.readouterr().out)
    row = next(c for c in report["checks"] if c["check"] == "database")
    assert (row["ok"], "not created yet" in row["detail"]) == (True, True)
    assert not db_path().exists()  # doctor does not create it
    crucible_home.mkdir(parents=True)
    populated(db_path())
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    row = next(c for c in report["checks"] if c["check"] == "database")
    assert (row["ok"], "quick_check ok" in row["detail"]) == (True, True)


def test_jobs_recover_rebuilds_the_file_keeping_every_job(
    damaged: tuple[Path, dict[str, int]], capsys: pytest.CaptureFixture[str], host: PluginHost
) -> None:
    path, counts = damaged
    assert main(["jobs", "recover"]) == 0
    out = capsys.readouterr().out
    assert "damaged" in out
    assert f"jobs         {JOBS} row(s) kept" in out
    assert "lineage_edges" in out
    assert check_file(path) == []
    backups = list(path.parent.glob("crucible.db.corrupt-*"))
    assert [b.name for b in backups if not b.name.endswith(("-wal", "-shm"))]
    assert check_file(next(b for b in backups if b.name.count("-") == 1))  # kept as it was
    with Scheduler(path, sync="normal") as sched:
        assert sched.counts() == counts
        sched.check()
        lineage = LineageRecorder(path)
        assert [e.dst for e in lineage.edges("job-a")] == ["dataset:mem"]
        lineage.close()
        # The queued index answers again: a worker claims and runs a job.
        stats = Worker(sched, host=host, poll_s=0.01).run(max_jobs=1)
        assert stats.succeeded == 1
    # A second run finds nothing to do.
    assert main(["jobs", "recover"]) == 0
    assert "nothing to repair" in capsys.readouterr().out


def test_recover_refuses_a_damaged_table_and_changes_nothing(
    crucible_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crucible_home.mkdir(parents=True)
    path = db_path()
    populated(path)
    smash(path, "jobs")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="nothing was changed") as info:
        repair(path)
    assert info.value.hint is not None
    assert ".recover" in info.value.hint
    assert path.read_bytes() == before
    assert not list(path.parent.glob("crucible.db.corrupt-*"))
    assert main(["jobs", "recover"]) == 2
    assert "nothing was changed" in capsys.readouterr().err


def test_claim_on_a_damaged_index_raises_instead_of_looping(
    damaged: tuple[Path, dict[str, int]],
) -> None:
    path, _ = damaged

    def claim_all(sched: Scheduler) -> None:
        for _ in range(JOBS):
            sched.claim("w", lease_s=60)

    with Scheduler(path, sync="normal") as sched, pytest.raises(ConfigError) as info:
        claim_all(sched)
    assert str(path) in info.value.message
    assert "corrupt" in info.value.message


def test_cli_worker_with_progress_on_a_damaged_database_leaves_no_thread(
    damaged: tuple[Path, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    before = {t.ident for t in threading.enumerate()}
    assert main(["worker", "--exit-when-idle", "--progress"]) == 2
    assert "crucible jobs recover" in capsys.readouterr().err
    # The event bus's subscriber threads (rich's own refresh thread is not ours to judge).
    left = [
        t
        for t in threading.enumerate()
        if t.ident not in before and t.is_alive() and t.name.startswith("crucible-events-")
    ]
    assert not left, left

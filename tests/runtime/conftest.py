"""Fixtures for runtime tests: a real SQLite scheduler on disk with a hand-driven clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crucible_core.queue.scheduler import Scheduler


class FakeClock:
    """Wall-clock seconds that only move when a test says so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "home" / "crucible.db"


@pytest.fixture
def sched(db_file: Path, clock: FakeClock) -> Iterator[Scheduler]:
    s = Scheduler(db_file, clock=clock, sync="normal")
    yield s
    s.close()

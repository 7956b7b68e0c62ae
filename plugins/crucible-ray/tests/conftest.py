"""One local Ray instance for these tests (ray.init(num_cpus=2): start-up takes seconds).

One per test module (the suite runs a file's tests in one pytest-xdist
worker): it starts with the module's first test that asks for it and stops
after the module's last test, so the rest of a full-suite run does not share
the 2 CI cores and the memory with idle Ray processes.

Ray workers inherit this process's environment when Ray starts, so this
directory goes on ``PYTHONPATH`` first: they import the job bodies in
``_ray_jobs`` by name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (HERE, os.environ.get("PYTHONPATH", "")) if p
    )
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("CRUCIBLE_HOME", str(h))
    return h

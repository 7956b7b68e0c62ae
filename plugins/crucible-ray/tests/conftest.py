"""One local Ray instance for the whole session (ray.init(num_cpus=2): start-up takes seconds).

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


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (HERE, os.environ.get("PYTHONPATH", "")) if p
    )
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("CRUCIBLE_HOME", str(h))
    return h

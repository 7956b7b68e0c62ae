"""Fixtures: an isolated CRUCIBLE_HOME and real training runs on the core tests' toy backend.

The toy backend (``tests/toy_backend.py`` of the repository, a numpy bigram
model that really learns) runs the real training workflow: manifests,
checkpoints and sha256 records are written by core, not fabricated here. The
end-to-end test uses crucible-local.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from crucible_registry import Registry

from crucible_core.ir import (
    AdamW,
    CheckpointPolicy,
    DatasetSpec,
    Full,
    LearningConfig,
    ModelSpec,
    TrainingJob,
)
from crucible_core.plugins import PluginHost, reset_host
from crucible_core.train.run import run_training


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("CRUCIBLE_USER", "tester")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("CRUCIBLE_HOME", str(h))
    return h


@pytest.fixture
def toy(home: Path) -> Iterator[PluginHost]:
    from tests.toy_backend import toy_plugin

    h = PluginHost(autoload=False)
    h.add_plugin(toy_plugin(), name="toy")
    reset_host(h)
    yield h
    reset_host(None)


def toy_job(**changes: object) -> TrainingJob:
    job = TrainingJob(
        backend="toyfile",
        model_spec=ModelSpec(name="toy", revision="r1"),
        adapter_config=Full(),
        dataset_spec=DatasetSpec(uri="mem"),
        learning_config=LearningConfig(optimizer=AdamW(lr=0.02), batch_size=4, max_steps=12),
        checkpoint_policy=CheckpointPolicy(save_every=4, keep_last=2, save_best=False),
    )
    return msgspec.structs.replace(job, **changes)


@pytest.fixture
def make_job() -> Callable[..., TrainingJob]:
    """``make_job(**changes)``: the toy TrainingJob (file checkpoints every 4 steps, 12 steps)."""
    return toy_job


@pytest.fixture
def train(toy: PluginHost, home: Path) -> Callable[..., Path]:
    """``train(run_id, **job_changes)``: a real toy run; returns its run directory."""

    def run(run_id: str, **changes: object) -> Path:
        run_training(toy_job(**changes), job_id=run_id, host=toy)
        return home / "runs" / run_id

    return run


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


@pytest.fixture
def three(train: Callable[..., Path], registry: Registry) -> Registry:
    """Versions 1, 2 (steps 8 and 12 of run-a) and 3 (step 12 of run-b, another lr) of 'bigram'."""
    train("run-a")
    train(
        "run-b",
        learning_config=LearningConfig(optimizer=AdamW(lr=0.03), batch_size=4, max_steps=12),
    )
    registry.register("run-a", name="bigram", checkpoint="8")
    registry.register("run-a", name="bigram", checkpoint="12")
    registry.register("run-b", name="bigram", checkpoint="12")
    return registry

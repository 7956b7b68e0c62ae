"""Fixtures for crucible-mlflow: an isolated CRUCIBLE_HOME, a plugin host with the real
crucible-local backend (and crucible-datasets), a short version of the README main job,
and HTTP endpoints on 127.0.0.1 that hang.

Everything is real: real training on the CPU, a real SQLite tracking store read back
through mlflow's own ``MlflowClient``, real HTTP over loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crucible_mlflow import sink as sink_module

from crucible_core.plugins import PluginHost, reset_host
from crucible_core.testing.http import LocalEndpoint

ROOT = Path(__file__).resolve().parents[3]
MAIN_JOB = ROOT / "examples" / "dates-local.toml"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "crucible-home"))
    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("TRACKING_URI", "EXPERIMENT", "ARTIFACTS", "QUEUE", "FLUSH_S"):
        monkeypatch.delenv(f"CRUCIBLE_MLFLOW_{name}", raising=False)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    sink_module.reset(5)
    yield
    sink_module.reset(5)


@pytest.fixture
def crucible_home(tmp_path: Path) -> Path:
    return tmp_path / "crucible-home"


def make_host(*extra: tuple[Any, str]) -> PluginHost:
    """Datasets, the local backend, then ``extra`` plugins, then crucible-mlflow."""
    import crucible_datasets.plugin
    import crucible_local.plugin
    import crucible_mlflow.plugin

    h = PluginHost(autoload=False)
    h.add_plugin(crucible_datasets.plugin, name="datasets")
    h.add_plugin(crucible_local.plugin, name="local")
    for plugin, name in extra:
        h.add_plugin(plugin, name=name)
    h.add_plugin(crucible_mlflow.plugin, name="mlflow")
    return h


@pytest.fixture
def host() -> Iterator[PluginHost]:
    h = make_host()
    reset_host(h)
    yield h
    reset_host(None)


def short_main_job(tmp_path: Path, *, steps: int = 6) -> Path:
    """examples/dates-local.toml with ``steps`` steps, a checkpoint and an evaluation every
    ``steps // 2``: the README main job, short enough for a test (a few seconds)."""
    text = MAIN_JOB.read_text()
    half = max(steps // 2, 1)
    text = (
        text.replace("max_steps = 200", f"max_steps = {steps}")
        .replace("save_every = 100", f"save_every = {half}")
        .replace("every_n_steps = 100", f"every_n_steps = {half}")
        .replace('"examples/data/dates.jsonl"', f'"{ROOT / "examples" / "data" / "dates.jsonl"}"')
    )
    assert f"max_steps = {steps}" in text
    assert str(ROOT) in text
    path = tmp_path / "dates-short.toml"
    path.write_text(text)
    return path


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    return short_main_job(tmp_path)


@pytest.fixture
def hanging_server() -> Iterator[LocalEndpoint]:
    """An HTTP server on 127.0.0.1 that holds every request 60 s (released at the end)."""
    with LocalEndpoint(hang_s=60.0) as s:
        yield s


@pytest.fixture
def host_with() -> Any:
    """``host_with((plugin, name), ...)``: :func:`make_host`, not installed."""
    return make_host


@pytest.fixture
def short_job() -> Any:
    """``short_job(tmp_path, steps=6)``: the shortened main job as a TrainingJob."""
    from crucible_core.ir.codec import decode_file
    from crucible_core.ir.training import TrainingJob

    def load(tmp_path: Path, *, steps: int = 6) -> TrainingJob:
        return decode_file(short_main_job(tmp_path, steps=steps), TrainingJob)

    return load

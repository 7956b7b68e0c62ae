"""The pure parts of the event -> MLflow mapping: names MLflow accepts, params, statuses.

MLflow's own name validation (``mlflow.utils.validation``) is the oracle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from crucible_mlflow.config import MlflowConfig
from crucible_mlflow.track import flatten, metric_key, mlflow_status
from hypothesis import given
from hypothesis import strategies as st
from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name

from crucible_core.errors import ConfigError


@given(st.lists(st.text(max_size=12), min_size=1, max_size=4))
def test_every_metric_key_is_a_name_mlflow_accepts(parts: list[str]) -> None:
    key = metric_key(*parts)
    assert validate_param_and_metric_name(key)
    assert not path_not_unique(key)


def test_ordinary_names_are_kept() -> None:
    assert metric_key("train", "loss:sum") == "train/loss:sum"
    assert metric_key("eval", "validation", "exact_match") == "eval/validation/exact_match"
    assert metric_key("eval", "a/../b", "x?") == "eval/a/__/b/x_"


_scalars = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.text())
_names = st.text(alphabet="abcxyz_", min_size=1, max_size=5)


@given(st.dictionaries(_names, st.dictionaries(_names, _scalars, max_size=4), max_size=4))
def test_flatten_keeps_every_leaf_under_its_dotted_path(nested: dict[str, Any]) -> None:
    flat = flatten(nested)
    expected = {
        f"{a}.{b}": v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else None
        for a, inner in nested.items()
        for b, v in inner.items()
    }
    assert set(flat) == set(expected)
    for key, value in expected.items():
        if value is not None:
            assert flat[key] == value
        else:  # numbers as JSON
            a, b = key.split(".")
            assert json.loads(flat[key]) == nested[a][b]


def test_flatten_writes_lists_as_json_and_bounds_values() -> None:
    assert flatten({"metrics": ["loss", "exact_match"]}) == {"metrics": '["loss", "exact_match"]'}
    assert len(flatten({"long": "x" * 10_000})["long"]) == 6000


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("succeeded", "FINISHED"),
        ("failed", "FAILED"),
        ("dead", "FAILED"),
        ("cancelled", "KILLED"),
        ("interrupted", "KILLED"),
        ("budget_exhausted", "KILLED"),
        (None, "KILLED"),
    ],
)
def test_run_statuses_map_to_mlflow_statuses(status: str | None, expected: str) -> None:
    assert mlflow_status(status) == expected


def test_default_store_is_sqlite_under_crucible_home(crucible_home: Path) -> None:
    config = MlflowConfig.from_env({})
    assert config.tracking_uri == f"sqlite:///{crucible_home.resolve() / 'mlflow.db'}"
    assert config.artifact_location == (crucible_home / "mlflow-artifacts").resolve().as_uri()
    assert (config.experiment, config.queue_size, config.flush_s) == ("crucible", 10_000, 10.0)


def test_settings_and_their_precedence(tmp_path: Path) -> None:
    config = MlflowConfig.from_env(
        {
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
            "MLFLOW_EXPERIMENT_NAME": "theirs",
            "CRUCIBLE_MLFLOW_EXPERIMENT": "ours",
        }
    )
    assert config.tracking_uri == "http://127.0.0.1:5000"
    assert config.artifact_location is None  # a server chooses its own
    assert config.experiment == "ours"
    config = MlflowConfig.from_env(
        {"CRUCIBLE_MLFLOW_TRACKING_URI": "none", "MLFLOW_TRACKING_URI": "sqlite:///x.db"}
    )
    assert config.tracking_uri is None
    config = MlflowConfig.from_env({"CRUCIBLE_MLFLOW_ARTIFACTS": str(tmp_path / "a")})
    assert config.artifact_location == (tmp_path / "a").as_uri()


@pytest.mark.parametrize(
    ("name", "value"),
    [("QUEUE", "many"), ("QUEUE", "0"), ("QUEUE", "1.5"), ("FLUSH_S", "-1"), ("FLUSH_S", "x")],
)
def test_a_bad_setting_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"CRUCIBLE_MLFLOW_{name}") as info:
        MlflowConfig.from_env({f"CRUCIBLE_MLFLOW_{name}": value})
    assert info.value.hint


_NO_TELEMETRY_SCRIPT = """
import sys, time
from crucible_mlflow.config import MlflowConfig
from crucible_mlflow.track import Tracker
from crucible_core.records.events import Event
t = Tracker(MlflowConfig.from_env())
t.handle(Event(kind="run.start", job_id="quiet", ts=time.time(), data={}))
t.handle(Event(kind="run.end", job_id="quiet", ts=time.time(), data={"status": "succeeded"}))
from mlflow.telemetry.client import get_telemetry_client
sys.exit(0 if get_telemetry_client() is None else 3)
"""


def test_mlflow_usage_telemetry_stays_off_outside_ci(tmp_path: Path) -> None:
    """A process like a user's (no CI or pytest variables): MLflow must not start its
    usage-telemetry client, which would write an installation id and call its vendor."""
    import os
    import subprocess
    import sys

    hidden = ("CI", "PYTEST_CURRENT_TEST", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env.update(CRUCIBLE_HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TELEMETRY_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "config" / "mlflow").exists()

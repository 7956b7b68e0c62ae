"""The pure parts of the event -> MLflow mapping: names MLflow accepts, params, statuses.

MLflow's own name validation (``mlflow.utils.validation``) is the oracle."""

from __future__ import annotations

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
            assert float(flat[key]) == nested[a][b]


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

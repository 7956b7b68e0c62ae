"""The sink's configuration, from environment variables.

Variables (defaults in brackets):

- ``CRUCIBLE_MLFLOW_TRACKING_URI``: where runs go; ``none`` turns the sink off
  [``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///$CRUCIBLE_HOME/mlflow.db``];
- ``CRUCIBLE_MLFLOW_EXPERIMENT``: the MLflow experiment runs are recorded in
  [``MLFLOW_EXPERIMENT_NAME`` if set, else ``crucible``];
- ``CRUCIBLE_MLFLOW_ARTIFACTS``: the artifact root of an experiment this
  plugin creates, for a local store [``$CRUCIBLE_HOME/mlflow-artifacts``;
  a remote tracking server chooses its own];
- ``CRUCIBLE_MLFLOW_QUEUE``: events waiting for the store before new ones are
  dropped [10000];
- ``CRUCIBLE_MLFLOW_FLUSH_S``: seconds a finishing process waits for the last
  writes [10].

A bad value is a :class:`~crucible_core.errors.ConfigError` naming the
variable; the sink logs it once and stays off (a copy of telemetry never stops
a run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from crucible_core.records.sinkenv import positive_number

__all__ = ["MlflowConfig"]

_PREFIX = "CRUCIBLE_MLFLOW_"


def _local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


@dataclass(frozen=True)
class MlflowConfig:
    """Where and how runs are recorded (see the module docstring for the variables).

    ``tracking_uri`` None means off. ``artifact_location`` is only used when
    the sink creates the experiment (None: the tracking server's default).
    """

    tracking_uri: str | None
    experiment: str = "crucible"
    artifact_location: str | None = None
    queue_size: int = 10_000
    flush_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MlflowConfig:
        """Read the variables of ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        from crucible_core.records.paths import crucible_home

        uri = (env.get(_PREFIX + "TRACKING_URI") or env.get("MLFLOW_TRACKING_URI") or "").strip()
        if uri.lower() == "none":
            return cls(tracking_uri=None)
        if not uri:
            uri = f"sqlite:///{crucible_home().resolve() / 'mlflow.db'}"
        artifacts = (env.get(_PREFIX + "ARTIFACTS") or "").strip()
        location: str | None = None
        if artifacts:
            location = artifacts if "://" in artifacts else Path(artifacts).resolve().as_uri()
        elif _local(uri):
            location = (crucible_home() / "mlflow-artifacts").resolve().as_uri()
        return cls(
            tracking_uri=uri,
            experiment=(
                env.get(_PREFIX + "EXPERIMENT") or env.get("MLFLOW_EXPERIMENT_NAME") or "crucible"
            ),
            artifact_location=location,
            queue_size=int(positive_number(env, _PREFIX + "QUEUE", 10_000, integer=True)),
            flush_s=positive_number(env, _PREFIX + "FLUSH_S", 10.0),
        )

"""Where the runtime keeps its state.

Everything durable lives under ``$CRUCIBLE_HOME`` (default ``./.crucible``,
relative to the working directory): the SQLite database ``crucible.db``
(jobs, lineage), ``runs/<job_id>/`` (``manifest.json``, ``telemetry.jsonl``,
``checkpoints/``) and ``artifacts/`` (the content-addressed store).

The environment is read on every call, so a test or an embedding platform
can point the runtime elsewhere without restarting anything.

Supported surface: :func:`crucible_home`, :func:`db_path`, :func:`run_dir`,
:func:`artifacts_dir`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from crucible_core.errors import ConfigError
from crucible_core.ids import ID_HINT, is_valid_id, shown

__all__ = ["artifacts_dir", "crucible_home", "db_path", "run_dir"]


def crucible_home() -> Path:
    """``$CRUCIBLE_HOME``, or ``./.crucible`` when unset or empty (not created here)."""
    return _home(os.environ.get("CRUCIBLE_HOME", ""))


# Paths are immutable, so the ones built for a given environment value are kept: the
# API builds a run's path on every status request, and pathlib's parsing and joining
# cost more there than the file check they lead to.
@functools.lru_cache(maxsize=16)
def _home(raw: str) -> Path:
    raw = raw.strip()
    return Path(raw) if raw else Path(".crucible")


def db_path() -> Path:
    """The scheduler and lineage database: ``$CRUCIBLE_HOME/crucible.db``."""
    return crucible_home() / "crucible.db"


def artifacts_dir() -> Path:
    """The content-addressed artifact store: ``$CRUCIBLE_HOME/artifacts``."""
    return crucible_home() / "artifacts"


def run_dir(job_id: str) -> Path:
    """The directory of one run: ``$CRUCIBLE_HOME/runs/<job_id>`` (not created here).

    ``job_id`` must be a valid id (:mod:`crucible_core.ids`): it becomes a
    directory name, so a path separator, ``..``, an empty or over-long name is
    refused with a ``ConfigError``.
    """
    return _run_dir(os.environ.get("CRUCIBLE_HOME", ""), job_id)


@functools.lru_cache(maxsize=4096)
def _run_dir(raw_home: str, job_id: str) -> Path:
    if not is_valid_id(job_id):  # raised, so never cached
        raise ConfigError(f"{shown(job_id)} cannot name a run directory", hint=ID_HINT)
    return _home(raw_home) / "runs" / job_id

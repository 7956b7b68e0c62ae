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

import os
import re
from pathlib import Path

from crucible_core.errors import ConfigError

__all__ = ["artifacts_dir", "crucible_home", "db_path", "run_dir"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")


def crucible_home() -> Path:
    """``$CRUCIBLE_HOME``, or ``./.crucible`` when unset or empty (not created here)."""
    raw = os.environ.get("CRUCIBLE_HOME", "").strip()
    return Path(raw) if raw else Path(".crucible")


def db_path() -> Path:
    """The scheduler and lineage database: ``$CRUCIBLE_HOME/crucible.db``."""
    return crucible_home() / "crucible.db"


def artifacts_dir() -> Path:
    """The content-addressed artifact store: ``$CRUCIBLE_HOME/artifacts``."""
    return crucible_home() / "artifacts"


def run_dir(job_id: str) -> Path:
    """The directory of one run: ``$CRUCIBLE_HOME/runs/<job_id>`` (not created here).

    ``job_id`` must be a plain name (letters, digits, ``. _ : @ -``): it
    becomes a directory name, so a path separator or ``..`` is refused.
    """
    if not _SAFE_ID.match(job_id) or ".." in job_id:
        raise ConfigError(
            f"{job_id!r} cannot name a run directory",
            hint="job ids are letters, digits and . _ : @ -, starting with a letter or digit",
        )
    return crucible_home() / "runs" / job_id

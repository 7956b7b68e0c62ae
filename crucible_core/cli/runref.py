"""Resolving what a user typed (a run id, a run directory, a checkpoint path) to a run."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from crucible_core.errors import ConfigError, NotFound
from crucible_core.runtime import paths
from crucible_core.runtime.artifacts import MANIFEST_FILE, read_manifest

__all__ = ["find_run", "list_runs"]


def find_run(ref: str) -> tuple[Path, dict[str, Any]]:
    """``(run_dir, manifest)`` for a run id, a run directory, or a path inside a run."""
    candidates: list[Path] = []
    given = Path(ref).expanduser()
    if given.exists():
        node = given.resolve()
        candidates.extend([node, *node.parents])
    else:
        with contextlib.suppress(ConfigError):  # not a usable id: simply not a run id
            candidates.append(paths.run_dir(ref))
    for candidate in candidates:
        if (candidate / MANIFEST_FILE).is_file():
            return candidate, read_manifest(candidate)
    runs = [p.name for p in list_runs()][-5:]
    raise NotFound(
        f"no run {ref!r}: not a run id under {paths.crucible_home() / 'runs'} nor a path inside a "
        "run directory",
        hint=("recent runs: " + ", ".join(runs)) if runs else "start one with `crucible train`",
    )


def list_runs() -> list[Path]:
    """Run directories under ``$CRUCIBLE_HOME/runs``, oldest first."""
    root = paths.crucible_home() / "runs"
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / MANIFEST_FILE).is_file()]
    return sorted(runs, key=lambda p: (p / MANIFEST_FILE).stat().st_mtime)

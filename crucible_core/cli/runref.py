"""Resolving what a user typed (a run id, a run directory, a checkpoint path) to a run.

A reference is first taken as a path (an existing run directory or any path
inside one), then as a run id under ``$CRUCIBLE_HOME/runs``. What is neither
a valid id (:mod:`crucible_core.ids`) nor a path inside a run (``/``,
``../..``, a 5,000-character string) is a usage error (exit 2); a valid id
with no run is ``NotFound`` (exit 4). Nothing the user types raises anything
else: OS errors from probing the path (name too long, NUL byte, permission)
mean "not that path".

A reference with a URI scheme (``models:/dates@production``) is first handed
to the resolver an installed distribution declares for that scheme, in the
entry-point group ``crucible.resolvers`` (``models =
"crucible_registry.uri:resolve"``): a function taking the reference and
returning a run id, a run directory or a path inside a run. No hook, no
plugin host: the resolver is imported only when a reference of its scheme is
used. A scheme nobody resolves is a usage error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crucible_core.errors import ConfigError, NotFound
from crucible_core.ids import ID_HINT, is_valid_id, shown
from crucible_core.records import paths
from crucible_core.records.artifacts import MANIFEST_FILE, read_manifest

__all__ = ["RESOLVER_GROUP", "expand_ref", "find_run", "list_runs", "resolve_run"]

#: Entry-point group of reference resolvers: ``<scheme> = "module:function"``.
RESOLVER_GROUP = "crucible.resolvers"


def find_run(ref: str) -> tuple[Path, dict[str, Any]]:
    """``(run_dir, manifest)`` for a run id, a run directory, or a path inside a run."""
    run_dir = resolve_run(ref)
    return run_dir, read_manifest(run_dir)


def _scheme(ref: str) -> str | None:
    head, sep, _ = ref.partition(":/")
    if not sep or not head or len(head) > 32 or not head[0].isalpha():
        return None
    if not all(c.isascii() and (c.isalnum() or c in "+.-") for c in head):
        return None
    return head.lower()


def expand_ref(ref: str) -> str:
    """``ref`` with its URI scheme resolved (see the module docstring); other refs unchanged.

    An existing path wins over a scheme (a directory may be named ``models:``).
    """
    scheme = _scheme(ref)
    if scheme is None or _existing(ref) is not None:
        return ref
    from crucible_core import _entrypoints

    for ep in _entrypoints.entry_points(RESOLVER_GROUP):
        if ep.name == scheme:
            return str(ep.load()(ref))
    raise ConfigError(
        f"{shown(ref)}: no installed plugin resolves {scheme}:/ references",
        hint="install the plugin that provides them (models:/ comes with crucible-registry)",
    )


def resolve_run(ref: str) -> Path:
    """The run directory (one holding a manifest) that ``ref`` names; see the module docstring."""
    ref = expand_ref(ref)
    candidates: list[Path] = []
    node = _existing(ref)
    if node is not None:
        candidates.extend([node, *node.parents])
    valid = is_valid_id(ref)
    if valid:
        candidates.append(paths.run_dir(ref))
    for candidate in candidates:
        if _has_manifest(candidate):
            return candidate
    if not valid:
        raise ConfigError(
            f"{shown(ref)} is neither a run id nor a path inside a run directory",
            hint=ID_HINT,
        )
    runs = [p.name for p in list_runs()][-5:]
    raise NotFound(
        f"no run {ref!r}: not a run id under {paths.crucible_home() / 'runs'} nor a path inside a "
        "run directory",
        hint=("recent runs: " + ", ".join(runs)) if runs else "start one with `crucible train`",
    )


def _existing(ref: str) -> Path | None:
    if not ref:
        return None
    try:
        given = Path(ref).expanduser()
        return given.resolve() if given.exists() else None
    except (OSError, ValueError, RuntimeError):  # too long, NUL byte, symlink loop...
        return None


def _has_manifest(directory: Path) -> bool:
    try:
        return (directory / MANIFEST_FILE).is_file()
    except (OSError, ValueError):
        return False


def list_runs() -> list[Path]:
    """Run directories under ``$CRUCIBLE_HOME/runs``, oldest first."""
    root = paths.crucible_home() / "runs"
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / MANIFEST_FILE).is_file()]
    return sorted(runs, key=lambda p: (p / MANIFEST_FILE).stat().st_mtime)

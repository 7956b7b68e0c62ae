"""A fast reader of the ``crucible`` entry-point group.

``importlib.metadata`` costs ~25 ms to import (it pulls in the email parser)
before it reads a single file, which alone would double ``crucible``'s
start-up. Entry points are plain ``entry_points.txt`` files inside
``*.dist-info`` / ``*.egg-info`` directories on ``sys.path``; this module
reads only those, with the same precedence (first directory on ``sys.path``
wins for a distribution). ``CRUCIBLE_ENTRY_POINTS=importlib`` switches back to
``importlib.metadata`` (a test checks both agree).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

__all__ = ["ENTRY_POINT_GROUP", "EntryPoint", "entry_point_key", "entry_points", "env_list"]

#: The entry-point group plugins declare themselves in.
ENTRY_POINT_GROUP = "crucible"

# Compiled on first scan, not at import: `crucible --help` imports this module on its fast path.
# ``name-version[-pyX.Y].dist-info`` or ``.egg-info``; setuptools' in-tree develop
# metadata is ``name.egg-info`` with no version in its name (read from PKG-INFO).
_DIST_DIR = r"^(?P<name>[^-]+?)(?:-(?P<version>[^-]+?))?(?:-py[0-9.]+)?\.(dist|egg)-info$"


class _Dist:
    __slots__ = ("name", "path", "version")

    def __init__(self, name: str, version: str, path: str | None = None) -> None:
        self.name = name
        self.version = version
        self.path = path  # the *.dist-info / *.egg-info directory, when known


class EntryPoint:
    """One entry point: ``name = module:attr`` of a distribution."""

    __slots__ = ("dist", "group", "name", "value")

    def __init__(self, name: str, value: str, group: str, dist: _Dist) -> None:
        self.name = name
        self.value = value
        self.group = group
        self.dist = dist

    def load(self) -> Any:
        module, _, attr = self.value.partition(":")
        obj: Any = importlib.import_module(module.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        return obj


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(text: str, group: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if section == group and "=" in line:
            name, _, value = line.partition("=")
            out.append((name.strip(), value.strip()))
    return out


def _metadata(path: str, fallback_name: str, fallback_version: str | None) -> tuple[str, str]:
    """The distribution's name and version from METADATA/PKG-INFO headers.

    The directory name is normalised (underscores) and may lack the version.
    """
    name, version = None, None
    for fname in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(path, fname), encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("Name:"):
                        name = line[5:].strip()
                    elif line.startswith("Version:"):
                        version = line[8:].strip()
                    if not line.strip() or (name and version):
                        break
        except OSError:
            continue
        break
    return name or fallback_name, fallback_version or version or "0"


def entry_points(group: str) -> list[EntryPoint]:
    """Entry points of ``group`` from every distribution on ``sys.path``."""
    if os.environ.get("CRUCIBLE_ENTRY_POINTS") == "importlib":
        from importlib.metadata import entry_points as _eps

        return [
            EntryPoint(ep.name, ep.value, group, _Dist(ep.dist.name, ep.dist.version))  # type: ignore[union-attr]
            for ep in _eps(group=group)
            if ep.dist is not None
        ]
    dist_dir = re.compile(_DIST_DIR)
    seen: set[str] = set()
    found: list[EntryPoint] = []
    for entry in sys.path:
        directory = entry or "."
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for dirname in sorted(names):
            m = dist_dir.match(dirname)
            if m is None:
                continue
            key = _normalize(m.group("name"))
            if key in seen:
                continue
            seen.add(key)
            path = os.path.join(directory, dirname)
            try:
                with open(os.path.join(path, "entry_points.txt"), encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            pairs = _parse(text, group)
            if not pairs:
                continue
            dist = _Dist(*_metadata(path, m.group("name"), m.group("version")), path)
            found.extend(EntryPoint(n, v, group, dist) for n, v in pairs)
    return found


def entry_point_key(ep: Any) -> str:
    """A string that changes whenever the plugin behind ``ep`` may have changed.

    Name, target, distribution name and version, and the modification time of
    the distribution's metadata directory (a reinstall of the same version
    rewrites it). Keys the command index ``crucible --help`` reads; an
    editable install's edits do not change it (any command that loads plugins
    refreshes the index).
    """
    dist = getattr(ep, "dist", None)
    path = getattr(dist, "path", None)
    stamp = 0
    if isinstance(path, str):
        try:
            stamp = os.stat(path).st_mtime_ns
        except OSError:
            stamp = 0
    return (
        f"{ep.name}={getattr(ep, 'value', '')}|{getattr(dist, 'name', None)}"
        f"=={getattr(dist, 'version', None)}|{stamp}"
    )


def env_list(name: str) -> set[str] | None:
    """The comma-separated names in environment variable ``name`` (None when unset)."""
    raw = os.environ.get(name)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}

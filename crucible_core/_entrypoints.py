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

__all__ = ["EntryPoint", "entry_points"]

_DIST_DIR = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+?)(?:-py[0-9.]+)?\.(dist|egg)-info$")


class _Dist:
    __slots__ = ("name", "version")

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version


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


def _metadata_name(path: str, fallback: str) -> str:
    # The directory name is normalised (underscores); METADATA has the real name.
    for fname in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(path, fname), encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("Name:"):
                        return line[5:].strip()
                    if not line.strip():
                        break
        except OSError:
            continue
    return fallback


def entry_points(group: str) -> list[EntryPoint]:
    """Entry points of ``group`` from every distribution on ``sys.path``."""
    if os.environ.get("CRUCIBLE_ENTRY_POINTS") == "importlib":
        from importlib.metadata import entry_points as _eps

        return [
            EntryPoint(ep.name, ep.value, group, _Dist(ep.dist.name, ep.dist.version))  # type: ignore[union-attr]
            for ep in _eps(group=group)
            if ep.dist is not None
        ]
    seen: set[str] = set()
    found: list[EntryPoint] = []
    for entry in sys.path:
        directory = entry or "."
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for dirname in sorted(names):
            m = _DIST_DIR.match(dirname)
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
            dist = _Dist(_metadata_name(path, m.group("name")), m.group("version"))
            found.extend(EntryPoint(n, v, group, dist) for n, v in pairs)
    return found

"""The index of plugin commands that ``crucible --help`` lists without importing plugins.

Why: a plugin's commands are only known by calling its ``register_commands``
hook, which means importing the plugin, and ``--help`` must stay as cheap as
``import crucible_core`` whatever is installed. So every ``crucible`` command
that loads plugins records, per entry point, the commands it registered; the
help reads that record back and uses an entry only while its key
(:func:`crucible_core._entrypoints.entry_point_key`: target, distribution,
version, metadata mtime) still matches what is installed. A plugin with no
matching entry is named in the help as "not indexed yet".

The file is ``commands-<hash of sys.prefix>.json`` (one per environment) in
``$CRUCIBLE_CACHE_DIR``, else ``$XDG_CACHE_HOME/crucible``, else
``~/.cache/crucible``. Reading needs only ``json``; any unreadable or
unwritable file is treated as empty, never as an error.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from crucible_core._entrypoints import entry_point_key, env_list

if TYPE_CHECKING:
    from crucible_core.plugins import PluginHost

__all__ = ["index_path", "indexed_commands", "read", "write"]

_FORMAT = 1


def index_path() -> Path:
    """Where this environment's index lives."""
    base = os.environ.get("CRUCIBLE_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "crucible")
    return Path(base) / f"commands-{zlib.crc32(sys.prefix.encode()):08x}.json"


def read() -> dict[str, dict[str, Any]]:
    """Entry-point name -> ``{"key": ..., "commands": [[name, summary], ...]}`` (empty if none)."""
    try:
        data = json.loads(index_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _FORMAT:  # pyright: ignore[reportUnknownMemberType]
        return {}
    plugins = cast(dict[str, Any], data).get("plugins")
    return cast(dict[str, dict[str, Any]], plugins) if isinstance(plugins, dict) else {}


def indexed_commands(entry_points: Iterable[Any]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``([(command, summary, plugin), ...], [plugins not indexed])`` for the help.

    Honours ``CRUCIBLE_PLUGINS`` / ``CRUCIBLE_DISABLE_PLUGINS`` like loading does.
    """
    index = read()
    only = env_list("CRUCIBLE_PLUGINS")
    disabled = env_list("CRUCIBLE_DISABLE_PLUGINS") or set()
    commands: list[tuple[str, str, str]] = []
    missing: list[str] = []
    for ep in entry_points:
        name = str(ep.name)
        if (only is not None and name not in only) or name in disabled:
            continue
        entry = index.get(name)
        if not isinstance(entry, dict) or entry.get("key") != entry_point_key(ep):
            missing.append(name)
            continue
        for pair in cast(list[Any], entry.get("commands") or []):
            if isinstance(pair, list) and len(cast(list[Any], pair)) == 2:
                command, summary = cast(list[Any], pair)
                commands.append((str(command), str(summary), name))
    return commands, missing


def write(host: PluginHost) -> None:
    """Record the commands of every plugin ``host`` loaded from an entry point.

    Entries of plugins this host did not load (disabled now) are kept; the
    file is rewritten only when something changed.
    """
    index = read()
    updated = dict(index)
    commands = host.registrations("command", check=False)
    infos = {info.name: info for info in host.plugins()}
    for plugin, key in host.entry_point_keys.items():
        info = infos.get(plugin)
        if info is None or info.status == "disabled":
            continue
        mine = sorted([r.name, r.summary] for r in commands.values() if r.plugin == plugin)
        updated[plugin] = {"key": key, "commands": mine}
    if updated == index:
        return
    from crucible_core.runtime.artifacts import write_json

    try:
        write_json(index_path(), {"format": _FORMAT, "plugins": updated})
    except OSError:
        return

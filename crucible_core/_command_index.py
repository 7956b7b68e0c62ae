"""The index of plugin commands that ``crucible --help`` lists without importing plugins.

Why: a plugin's commands are only known by calling its ``register_commands``
hook, which means importing the plugin, and ``--help`` must stay close to the
cost of ``import crucible_core`` whatever is installed. So every ``crucible``
command that loads plugins records, per entry point, the commands it
registered; the help reads that record back.

An entry is trusted only while what is installed is unchanged. Fast path: the
modification times of the ``sys.path`` directories equal those recorded
(installing, reinstalling or removing a distribution adds or removes a
directory there), so the recorded entry points are used without scanning.
Otherwise the entry points are scanned and each entry is used only if its key
(:func:`crucible_core._entrypoints.entry_point_key`: target, distribution,
version, metadata mtime) still matches. A plugin with no usable entry is
named in the help as "not indexed yet". Edits to an editable install change
nothing here; any command that loads plugins rewrites the index.

The file is ``commands-<hash of sys.prefix>.marshal`` (one per environment)
in ``$CRUCIBLE_CACHE_DIR``, else ``$XDG_CACHE_HOME/crucible``, else
``~/.cache/crucible``. It is :mod:`marshal` data rather than JSON because
``marshal`` is already loaded when Python starts, while importing ``json``
alone costs about a third of what ``crucible --help`` may add to a bare
``import crucible_core``; the format is private to this module and the
``format`` field guards changes. A missing, unreadable or unwritable file is
treated as empty, never as an error.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sys
import zlib
from typing import TYPE_CHECKING, Any, cast

from crucible_core._entrypoints import ENTRY_POINT_GROUP, entry_point_key, entry_points, env_list

if TYPE_CHECKING:
    from crucible_core.plugins import PluginHost

__all__ = ["index_path", "indexed_commands", "read", "write"]

_FORMAT = 2


def index_path() -> str:
    """Where this environment's index lives."""
    base = os.environ.get("CRUCIBLE_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "crucible")
    return os.path.join(base, f"commands-{zlib.crc32(sys.prefix.encode()):08x}.marshal")


def _path_stamps() -> list[list[Any]]:
    """``[[directory, mtime_ns or None], ...]`` for ``sys.path``, in order."""
    out: list[list[Any]] = []
    for entry in sys.path:
        try:
            out.append([entry, os.stat(entry or ".").st_mtime_ns])
        except OSError:
            out.append([entry, None])
    return out


def read() -> dict[str, Any]:
    """The index as written (``{}`` when there is none or it cannot be read)."""
    try:
        with open(index_path(), "rb") as fh:
            data = marshal.load(fh)
    except (OSError, ValueError, EOFError, TypeError):
        return {}
    if not isinstance(data, dict) or cast(dict[str, Any], data).get("format") != _FORMAT:
        return {}
    return cast(dict[str, Any], data)


def indexed_commands() -> tuple[list[tuple[str, str, str]], list[str]]:
    """``([(command, summary, plugin), ...], [plugins not indexed])`` for the help.

    Honours ``CRUCIBLE_PLUGINS`` / ``CRUCIBLE_DISABLE_PLUGINS`` like loading does.
    """
    index = read()
    plugins = cast(dict[str, Any], index.get("plugins") or {})
    current: dict[str, Any] = {}
    if index and index.get("sys_path") == _path_stamps():
        for name in cast(list[Any], index.get("entry_points") or []):
            current[str(name)] = plugins.get(str(name))
    else:
        for ep in entry_points(ENTRY_POINT_GROUP):
            entry: Any = plugins.get(ep.name)
            usable = isinstance(entry, dict) and cast(dict[str, Any], entry).get("key") == (
                entry_point_key(ep)
            )
            current[ep.name] = entry if usable else None
    only = env_list("CRUCIBLE_PLUGINS")
    disabled = env_list("CRUCIBLE_DISABLE_PLUGINS") or set()
    commands: list[tuple[str, str, str]] = []
    missing: list[str] = []
    for name, entry in current.items():
        if (only is not None and name not in only) or name in disabled:
            continue
        if not isinstance(entry, dict):
            missing.append(name)
            continue
        for pair in cast(list[Any], cast(dict[str, Any], entry).get("commands") or []):
            command, summary = cast(list[Any], pair)
            commands.append((str(command), str(summary), name))
    return commands, missing


def write(host: PluginHost) -> None:
    """Record the commands of every plugin ``host`` loaded from an entry point.

    Entries of plugins this host did not load (disabled now) are kept while
    their entry point is still installed; the file is rewritten only when
    something changed.
    """
    index = read()
    old = cast(dict[str, Any], index.get("plugins") or {})
    commands = host.registrations("command", check=False)
    infos = {info.name: info for info in host.plugins()}
    plugins: dict[str, Any] = {}
    for plugin, key in host.entry_point_keys.items():
        info = infos.get(plugin)
        if info is None or info.status == "disabled":
            entry = old.get(plugin)
            if isinstance(entry, dict) and cast(dict[str, Any], entry).get("key") == key:
                plugins[plugin] = entry
            continue
        mine = sorted([r.name, r.summary] for r in commands.values() if r.plugin == plugin)
        plugins[plugin] = {"key": key, "commands": mine}
    updated = {
        "format": _FORMAT,
        "sys_path": _path_stamps(),
        "entry_points": list(host.entry_point_keys),
        "plugins": plugins,
    }
    if updated == index:
        return
    import tempfile

    path = index_path()
    tmp: str | None = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=os.path.dirname(path), prefix=".commands-", delete=False
        ) as fh:
            tmp = fh.name
            marshal.dump(updated, fh)
        os.replace(tmp, path)  # readers see the old index or the new one, never half
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

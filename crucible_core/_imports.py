"""``"package.module:attr"`` references, imported once and cached."""

from __future__ import annotations

import importlib
import threading
from typing import Any

from crucible_core.errors import PluginError

__all__ = ["import_object"]

_import_lock = threading.Lock()
_import_cache: dict[str, Any] = {}


def import_object(ref: str) -> Any:
    """Import ``"package.module:attr"`` (attr may be dotted) and return the object; cached."""
    cached = _import_cache.get(ref)
    if cached is not None:
        return cached
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(
            f"bad factory reference {ref!r}", hint="write it as 'package.module:attribute'"
        )
    with _import_lock:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        _import_cache[ref] = obj
    return obj

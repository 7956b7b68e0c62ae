"""The library API: resolve registered things by name, list plugins.

``crucible_core.get_backend("local", **options)`` builds the backend the
``local`` registration's factory makes; the ``get_*`` functions for the other
kinds work the same way. All go through the process-wide
:class:`~crucible_core.plugins.PluginHost`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, cast

from crucible_core.errors import ConfigError
from crucible_core.plugins import PluginInfo, Registration, get_host

__all__ = [
    "get_artifact_store",
    "get_backend",
    "get_dataset",
    "get_ensemble_strategy",
    "get_executor",
    "get_hedging_policy",
    "get_metric",
    "get_renderer",
    "get_stage",
    "list_plugins",
    "list_registrations",
    "open_backend",
]


def get_backend(name: str, **options: Any) -> Any:
    """Build the backend registered as ``name`` with ``options``."""
    return get_host().create("backend", name, **options)


def open_backend(
    spec: Any, *, field: str, keys: Collection[str] = ("name", "options")
) -> tuple[Any, bool]:
    """The backend a composing backend's option names, and whether it was built here.

    ``spec`` is a registered name, a table ``{"name": ..., "options": {...}}`` (plus
    any of ``keys`` the caller reads itself, e.g. an ensemble member's ``weight``),
    or a backend object (anything with ``complete`` or ``sample``), used as it is.
    ``owned`` is true when it was built here, so the caller closes it. Anything else
    is a ``ConfigError`` naming ``field``. Ensembles and hedging resolve their
    members this way, so every composing backend accepts the same three forms.
    """
    if isinstance(spec, str):
        return get_backend(spec), True
    if isinstance(spec, Mapping):
        table = cast(Mapping[str, Any], spec)
        if "name" not in table or set(table) - set(keys):
            optional = ", ".join(repr(k) for k in keys if k != "name")
            raise ConfigError(
                f"{field}: expected a table with 'name' (and optional {optional}), "
                f"got keys {sorted(table)}"
            )
        return get_backend(str(table["name"]), **dict(table.get("options") or {})), True
    if callable(getattr(spec, "complete", None)) or callable(getattr(spec, "sample", None)):
        return spec, False
    raise ConfigError(
        f"{field}: {type(spec).__name__} is not a backend name, table or backend object"
    )


def get_stage(name: str, **options: Any) -> Any:
    """Build the pipeline stage registered as ``name``."""
    return get_host().create("stage", name, **options)


def get_dataset(name: str, **options: Any) -> Any:
    """Build the dataset source registered as ``name``."""
    return get_host().create("dataset", name, **options)


def get_renderer(name: str, **options: Any) -> Any:
    """Build the chat renderer registered as ``name``."""
    return get_host().create("renderer", name, **options)


def get_metric(name: str) -> Any:
    """The metric function registered as ``name`` (not called)."""
    return get_host().get("metric", name).load()


def get_executor(name: str, **options: Any) -> Any:
    """Build the executor registered as ``name``."""
    return get_host().create("executor", name, **options)


def get_artifact_store(name: str, **options: Any) -> Any:
    """Build the artifact store registered as ``name``."""
    return get_host().create("artifact_store", name, **options)


def get_ensemble_strategy(name: str, **options: Any) -> Any:
    """Build the ensemble strategy registered as ``name``."""
    return get_host().create("ensemble_strategy", name, **options)


def get_hedging_policy(name: str, **options: Any) -> Any:
    """Build the hedging policy registered as ``name``."""
    return get_host().create("hedging_policy", name, **options)


def list_plugins() -> list[PluginInfo]:
    """Every plugin discovered, with its load status."""
    return get_host().plugins()


def list_registrations(kind: str) -> list[Registration]:
    """Every registration of ``kind`` (``backend``, ``stage``, ...), sorted by name."""
    return sorted(get_host().registrations(kind).values(), key=lambda r: r.name)

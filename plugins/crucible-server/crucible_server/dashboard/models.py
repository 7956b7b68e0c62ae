"""The models page's data, from crucible-registry's library API (when it is installed).

Each call opens its own :class:`~crucible_registry.Registry` (one instance is
for one thread) and closes it. Without crucible-registry the page says how to
install it and these functions are never called by it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from crucible_core.errors import NotFound

__all__ = ["describe_models", "rollback_alias", "version_lineage"]


def _registry() -> Any:
    try:
        from crucible_registry.registry import Registry
    except ImportError:
        raise NotFound(
            "the model registry is not installed", hint="pip install crucible-registry"
        ) from None
    return Registry()


def describe_models() -> dict[str, Any]:
    """Every model with its versions, aliases (each with its move history) and gates."""
    reg = _registry()
    try:
        out: list[dict[str, Any]] = []
        for model in reg.models():
            history = reg.history(model.name)
            aliases = [
                {
                    "alias": alias,
                    "version": version,
                    "history": [
                        msgspec.to_builtins(e) for e in reversed(history) if e.alias == alias
                    ],
                }
                for alias, version in sorted(model.aliases.items())
            ]
            out.append(
                {
                    "name": model.name,
                    "latest": model.latest,
                    "versions": [
                        {
                            "version": v.version,
                            "run_id": v.run_id,
                            "metrics": v.metrics,
                            "created_at": v.created_at,
                            "archived": v.archived,
                            "aliases": v.aliases,
                        }
                        for v in reg.versions(model.name)
                    ],
                    "aliases": aliases,
                    "gates": [msgspec.to_builtins(g) for g in reg.gates(model.name)],
                }
            )
        return {"models": out}
    finally:
        reg.close()


def rollback_alias(name: str, alias: str, actor: str) -> dict[str, Any]:
    """Undo the newest move of ``name@alias`` (see ``Registry.rollback``); the event."""
    reg = _registry()
    try:
        event = reg.rollback(name, alias, actor=f"dashboard:{actor}", reason="dashboard rollback")
        return msgspec.to_builtins(event)
    finally:
        reg.close()


def version_lineage(name: str, version: int) -> dict[str, Any]:
    """What version ``name/version`` came from and what came from it (lineage trees)."""
    reg = _registry()
    try:
        ref = f"{name}/{version}"
        reg.version(name, version)  # NotFound for an unknown version
        return {
            "ancestors": reg.ancestors(ref).to_dict(),
            "descendants": reg.descendants(ref).to_dict(),
        }
    finally:
        reg.close()

"""crucible-registry: versions of trained weights, aliases with history, tags.

Library use::

    from crucible_registry import Registry

    with Registry() as reg:                      # $CRUCIBLE_HOME/registry.db
        v = reg.register("train-2026...", name="dates")
        reg.set_alias("dates", "production", v.version, reason="beats v1 on exact_match")
        reg.rollback("dates", "production")
"""

from __future__ import annotations

from crucible_registry.names import ModelRef, parse_ref
from crucible_registry.registry import (
    UNSET,
    AliasEvent,
    ArtifactRef,
    EvalRecord,
    Gate,
    GateFailed,
    Model,
    Registry,
    Version,
)

__all__ = [
    "UNSET",
    "AliasEvent",
    "ArtifactRef",
    "EvalRecord",
    "Gate",
    "GateFailed",
    "Model",
    "ModelRef",
    "Registry",
    "Version",
    "parse_ref",
]

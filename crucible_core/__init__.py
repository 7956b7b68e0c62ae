"""Crucible: typed IR, contracts and plugin hooks for LLM fine-tuning and inference.

The supported surface is what ``__all__`` lists plus :mod:`crucible_core.testing`
(and the IR in :mod:`crucible_core.ir`, the contracts in
:mod:`crucible_core.contracts`, the errors in :mod:`crucible_core.errors`).
Everything else is internal and may move.

Importing this package is cheap: names are resolved on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "get_backend": "crucible_core.api",
    "get_stage": "crucible_core.api",
    "get_dataset": "crucible_core.api",
    "get_renderer": "crucible_core.api",
    "get_metric": "crucible_core.api",
    "get_executor": "crucible_core.api",
    "get_artifact_store": "crucible_core.api",
    "get_ensemble_strategy": "crucible_core.api",
    "get_hedging_policy": "crucible_core.api",
    "list_plugins": "crucible_core.api",
    "list_registrations": "crucible_core.api",
    "open_backend": "crucible_core.api",
    "hookimpl": "crucible_core.hookspecs",
    "RegisterApiRoute": "crucible_core.hookspecs",
    "RegisterArtifactStore": "crucible_core.hookspecs",
    "RegisterBackend": "crucible_core.hookspecs",
    "RegisterCommand": "crucible_core.hookspecs",
    "RegisterDataset": "crucible_core.hookspecs",
    "RegisterEnsembleStrategy": "crucible_core.hookspecs",
    "RegisterExecutor": "crucible_core.hookspecs",
    "RegisterHedgingPolicy": "crucible_core.hookspecs",
    "RegisterMetric": "crucible_core.hookspecs",
    "RegisterRenderer": "crucible_core.hookspecs",
    "RegisterReward": "crucible_core.hookspecs",
    "RegisterRoutingPolicy": "crucible_core.hookspecs",
    "RegisterStage": "crucible_core.hookspecs",
    "PluginHost": "crucible_core.plugins",
    "Registration": "crucible_core.plugins",
    "CrucibleError": "crucible_core.errors",
    "decode": "crucible_core.ir.codec",
    "decode_file": "crucible_core.ir.codec",
    "encode": "crucible_core.ir.codec",
}

__all__ = [
    "CrucibleError",
    "PluginHost",
    "RegisterApiRoute",
    "RegisterArtifactStore",
    "RegisterBackend",
    "RegisterCommand",
    "RegisterDataset",
    "RegisterEnsembleStrategy",
    "RegisterExecutor",
    "RegisterHedgingPolicy",
    "RegisterMetric",
    "RegisterRenderer",
    "RegisterReward",
    "RegisterRoutingPolicy",
    "RegisterStage",
    "Registration",
    "__version__",
    "decode",
    "decode_file",
    "encode",
    "get_artifact_store",
    "get_backend",
    "get_dataset",
    "get_ensemble_strategy",
    "get_executor",
    "get_hedging_policy",
    "get_metric",
    "get_renderer",
    "get_stage",
    "hookimpl",
    "list_plugins",
    "list_registrations",
    "open_backend",
]

if TYPE_CHECKING:
    from crucible_core.api import (
        get_artifact_store,
        get_backend,
        get_dataset,
        get_ensemble_strategy,
        get_executor,
        get_hedging_policy,
        get_metric,
        get_renderer,
        get_stage,
        list_plugins,
        list_registrations,
        open_backend,
    )
    from crucible_core.errors import CrucibleError
    from crucible_core.hookspecs import (
        RegisterApiRoute,
        RegisterArtifactStore,
        RegisterBackend,
        RegisterCommand,
        RegisterDataset,
        RegisterEnsembleStrategy,
        RegisterExecutor,
        RegisterHedgingPolicy,
        RegisterMetric,
        RegisterRenderer,
        RegisterReward,
        RegisterRoutingPolicy,
        RegisterStage,
        hookimpl,
    )
    from crucible_core.ir.codec import decode, decode_file, encode
    from crucible_core.plugins import PluginHost, Registration


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crucible_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

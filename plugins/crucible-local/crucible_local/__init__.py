"""crucible-local: Crucible's embedded default backend (PyTorch on CPU + PEFT).

Importing this package is cheap: the backend and the model helpers (which
import torch, transformers and peft) are resolved on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "LocalBackend": "crucible_local.backend",
    "LocalTrainingSession": "crucible_local.session",
    "LocalSampler": "crucible_local.sampler",
    "LocalTokenizer": "crucible_local.tokenizer",
    "TINY_MODELS": "crucible_local.capabilities",
    "static_capabilities": "crucible_local.capabilities",
    "write_tiny_model_dir": "crucible_local.models",
}

__all__ = [
    "TINY_MODELS",
    "LocalBackend",
    "LocalSampler",
    "LocalTokenizer",
    "LocalTrainingSession",
    "__version__",
    "static_capabilities",
    "write_tiny_model_dir",
]

if TYPE_CHECKING:
    from crucible_local.backend import LocalBackend
    from crucible_local.capabilities import TINY_MODELS, static_capabilities
    from crucible_local.models import write_tiny_model_dir
    from crucible_local.sampler import LocalSampler
    from crucible_local.session import LocalTrainingSession
    from crucible_local.tokenizer import LocalTokenizer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crucible_local' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

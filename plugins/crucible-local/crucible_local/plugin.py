"""Hook implementations of crucible-local: registrations only.

This module is imported whenever ``crucible`` lists plugins, so it imports
nothing heavy: the backend (torch, transformers, peft) is named by a string
and imported when the backend is first created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from crucible_core.hookspecs import hookimpl
from crucible_local.capabilities import BACKEND_ID, static_capabilities

__all__ = ["register_backends"]


@hookimpl
def register_backends(register: Callable[..., Any]) -> None:
    register(
        BACKEND_ID,
        "crucible_local.backend:LocalBackend",
        summary="Embedded default backend: PyTorch (CPU) + PEFT LoRA or full fine-tuning, "
        "tiny built-in models or a Hugging Face model directory; no account, no downloads",
        capabilities=static_capabilities(),
    )
    register(
        "local-adapter",
        "crucible_local.pool:AdapterBackend",
        summary="One LoRA adapter (a run's checkpoint) served from a pool sharing one base "
        "model in memory; adapters are loaded lazily, least recently used evicted",
        capabilities=msgspec.structs.replace(
            static_capabilities(), backend_id="local-adapter", supports_training=False
        ),
    )

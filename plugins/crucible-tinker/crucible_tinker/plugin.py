"""crucible-tinker's hook implementations: registrations only.

Registers the ``tinker`` backend (training + inference over the ``tinker``
SDK) and the ``serve-tinker`` command (a Tinker-compatible HTTP server over
any crucible training backend). Nothing heavy is imported here: not tinker,
not starlette/uvicorn, not torch. Factories are ``"module:attr"`` strings
resolved on first use.
"""

from __future__ import annotations

from typing import Any

from crucible_core.hookspecs import hookimpl
from crucible_core.ir.backend import Capabilities
from crucible_tinker.losses import NAMED_LOSSES

__all__ = ["CAPABILITIES", "register_backends", "register_commands"]

#: What the ``tinker`` backend can do, declared without contacting a server.
#: ``models`` is empty: the server decides (``TinkerBackend.capabilities()``
#: asks it when reachable).
CAPABILITIES = Capabilities(
    backend_id="tinker",
    provider="tinker",
    supports_training=True,
    supports_inference=True,
    supports_logprobs=True,
    supports_streaming=False,
    # Tinker's named losses (crucible_tinker.losses), and custom ones (forward_backward_custom).
    losses=[*NAMED_LOSSES, "custom"],
    adapters=["lora"],
    optimizers=["adamw"],
    schedulers=["constant", "linear", "cosine"],
    # Checkpoints stay on the server (tinker:// paths); Tinker keeps and exports LoRA
    # weights as safetensors.
    checkpoint_formats=["safetensors"],
    metadata={
        "checkpoint_uri_scheme": "tinker://",
        "pipelined": True,
        "retries": "the tinker SDK retries transport and server errors; this backend never does",
        # crucible export: the final weights downloaded through the SDK (external weights)
        # and written by crucible-local (see crucible_tinker.export).
        "export_formats": ["peft", "merged", "safetensors-full", "onnx", "gguf"],
    },
)


@hookimpl
def register_backends(register: Any) -> None:
    register(
        "tinker",
        "crucible_tinker.backend:TinkerBackend",
        summary="Train and sample through the tinker SDK (Tinker or any compatible server)",
        capabilities=CAPABILITIES,
    )


@hookimpl
def register_commands(register: Any) -> None:
    register(
        "serve-tinker",
        "crucible_tinker.cli:command",
        summary="Serve a Tinker-compatible HTTP API backed by a crucible training backend",
    )

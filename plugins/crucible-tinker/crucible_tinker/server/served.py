"""What the served crucible backend can do, asked once and checked against each request.

Every request that names a model, a LoRA rank or a length is bounded by the
backend's :class:`~crucible_core.ir.backend.Capabilities` and the server's
:class:`~crucible_tinker.server.config.ServerConfig`; this module holds both
and answers those questions (raising ConfigError for a request outside them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crucible_core.contracts import TrainingBackend
from crucible_core.errors import ConfigError
from crucible_core.ir.backend import Capabilities
from crucible_core.ir.training import ModelSpec
from crucible_tinker.server.config import ServerConfig

__all__ = ["ServedBackend"]


class ServedBackend:
    """The crucible backend behind the server, with its registered ``name``."""

    def __init__(self, backend: TrainingBackend, name: str, config: ServerConfig) -> None:
        self.backend = backend
        self.name = name
        self.config = config
        self._caps: Capabilities | None = None

    def capabilities(self) -> Capabilities:
        """The backend's capabilities (asked once: they bound every request)."""
        if self._caps is None:
            self._caps = self.backend.capabilities()
        return self._caps

    @property
    def context_length(self) -> int | None:
        """The longest sequence accepted: the configured one, else the backend's."""
        return self.config.max_context_length or self.capabilities().max_context_length

    @property
    def max_lora_rank(self) -> int:
        """The largest LoRA rank accepted: the backend's when it declares one, never more
        than ``ServerConfig.max_lora_rank``."""
        declared = self.capabilities().max_lora_rank
        cap = self.config.max_lora_rank
        return min(cap, declared) if declared is not None else cap

    def check_base_model(self, name: str) -> None:
        """ConfigError unless the backend can load ``name``: one of the models its
        capabilities list (any name when the list is empty), or, when it loads models by
        path (``metadata.models_by_path``), an existing directory."""
        caps = self.capabilities()
        if not caps.models or name in caps.models:
            return
        by_path = bool(caps.metadata.get("models_by_path"))
        if by_path:
            try:
                if Path(name).expanduser().is_dir():
                    return
            except (OSError, ValueError):  # too long, or a NUL byte: not a directory
                pass
        shown = name if len(name) <= 80 else name[:77] + "..."
        served = ", ".join(caps.models) + (
            ", or a model directory on the server" if by_path else ""
        )
        raise ConfigError(
            f"base model {shown!r} is not served here (the {self.name!r} backend serves {served})"
        )

    def tokenizer_id(self, base_model: str) -> str:
        """The tokenizer name ``get_info`` reports for ``base_model``.

        A tokenizer the backend keeps in a local directory is named by that path, so an
        SDK on this machine can load it with ``get_tokenizer()`` without a hub.
        """
        try:
            name = self.backend.get_tokenizer(ModelSpec(name=base_model)).name
        except Exception:
            return base_model
        return name if ":" not in name and Path(name).is_dir() else base_model

    def server_capabilities(self) -> dict[str, Any]:
        """The ``get_server_capabilities`` answer."""
        caps = self.capabilities()
        return {
            "supported_models": [
                {
                    "model_name": name,
                    "max_context_length": self.config.max_context_length or caps.max_context_length,
                    "trainable": caps.supports_training,
                    "sampleable": True,
                }
                for name in caps.models
            ]
        }

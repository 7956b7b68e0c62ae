"""What crucible-local declares, as plain data: no torch, no transformers.

``plugin.py`` registers :func:`static_capabilities` without importing
anything heavy; the backend returns the same object from ``capabilities()``.
"""

from __future__ import annotations

from crucible_core.ir.backend import Capabilities, Costs
from crucible_core.ir.training import LOSS_NAMES

__all__ = [
    "ADAPTERS",
    "BACKEND_ID",
    "CHECKPOINT_FORMATS",
    "EXPORT_FORMATS",
    "FINAL_EXPORT_FORMATS",
    "LOSSES",
    "MAX_CONTEXT_LENGTH",
    "MAX_LORA_RANK",
    "OPTIMIZERS",
    "SCHEDULERS",
    "TINY_MODELS",
    "static_capabilities",
]

BACKEND_ID = "local"

#: The built-in models: name -> one-line description. Built from a transformers
#: model class with a tiny config and seeded initialisation (nothing is downloaded).
TINY_MODELS: dict[str, str] = {
    "tiny-llama": "LlamaForCausalLM, 2 layers, hidden 64, byte-level vocabulary, context 512",
    "tiny-gpt2": "GPT2LMHeadModel, 2 layers, hidden 64, byte-level vocabulary, context 512",
}

#: Context length of the built-in models (a model loaded from a path declares its own).
MAX_CONTEXT_LENGTH = 512

#: Largest LoRA rank on the built-in models: their hidden size (a higher rank adds
#: nothing but memory). A model loaded from a path is bounded by its own size.
MAX_LORA_RANK = 64

#: Every named loss of the IR, and custom losses.
LOSSES: tuple[str, ...] = (*LOSS_NAMES, "custom")
ADAPTERS: tuple[str, ...] = ("lora", "full")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
SCHEDULERS: tuple[str, ...] = ("constant", "linear", "cosine")
CHECKPOINT_FORMATS: tuple[str, ...] = ("safetensors", "pytorch")
#: What ``crucible export --format`` writes from a crucible-local run.
EXPORT_FORMATS: tuple[str, ...] = ("peft", "merged", "safetensors-full", "onnx", "gguf")
#: ``checkpoint_policy.format`` values that are export formats: checkpoints are written as
#: safetensors and the final checkpoint is also exported in that format.
FINAL_EXPORT_FORMATS: tuple[str, ...] = ("gguf", "onnx")

_CAPABILITIES = Capabilities(
    backend_id=BACKEND_ID,
    provider="crucible-local (PyTorch on CPU + PEFT)",
    models=list(TINY_MODELS),
    supports_streaming=True,
    supports_training=True,
    supports_logprobs=True,
    supports_inference=True,
    losses=list(LOSSES),
    adapters=["lora", "full"],
    optimizers=list(OPTIMIZERS),
    schedulers=list(SCHEDULERS),
    checkpoint_formats=list(CHECKPOINT_FORMATS),
    max_context_length=MAX_CONTEXT_LENGTH,
    max_lora_rank=MAX_LORA_RANK,
    costs=Costs(),
    metadata={
        "device": "cpu",
        "models_by_path": True,
        "models_by_hub_id": "from the local Hugging Face cache only (never downloads)",
        "export_formats": list(EXPORT_FORMATS),
        "push_to_hub": "after the run, its export (peft, merged for a full fine-tune, or "
        "checkpoint_policy.format when gguf/onnx) is uploaded with huggingface_hub to "
        "HF_ENDPOINT (needs network to reach it)",
        "qlora": "unsupported: needs bitsandbytes and a CUDA device",
        "max_context_length": "applies to the built-in models; a model loaded from "
        "model_spec.path has its own",
        "max_lora_rank": "applies to the built-in models (their hidden size)",
    },
)


def static_capabilities() -> Capabilities:
    """The capabilities of the ``local`` backend (the same object every call)."""
    return _CAPABILITIES

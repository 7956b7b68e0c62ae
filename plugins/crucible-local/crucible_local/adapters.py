"""From an AdapterConfig to a trainable model: LoRA through PEFT, or full fine-tuning.

How ``LoRA`` fields become PEFT's target modules, in this order:

1. ``target_modules`` names layers by their last name component (``q_proj``,
   matching every layer called so) or by full qualified name
   (``model.layers.0.self_attn.q_proj``). ``"all-linear"`` stands for every
   Linear/Conv1D layer inside an attention or MLP block. A name that matches
   nothing is a ConfigError listing the model's adaptable layer names.
2. ``train_attn = false`` removes every layer inside an attention block
   (a parent named ``*attn*``/``*attention*``); ``train_mlp = false`` removes
   every layer inside an MLP block (``*mlp*``, ``*feed_forward*``, ``*ffn*``).
   These flags only remove: with the default ``target_modules = ["q_proj",
   "v_proj"]`` they change nothing.
3. ``train_unembed = true`` adds the output projection (``lm_head``). Models
   that tie it to the input embedding (GPT-2) refuse this: PEFT cannot keep a
   LoRA on one tied copy consistent.

The resulting list of qualified names is what ``adapter_config.json`` records.
``rank``/``alpha``/``dropout``/``bias`` map to PEFT's ``r``/``lora_alpha``/
``lora_dropout``/``bias``. LoRA A matrices are initialised from the job's seed.
``Full`` trains every parameter; ``QLoRA`` is refused (no 4/8-bit CPU kernels).

``model_spec.adapter`` (``start_from`` here) names an outside PEFT LoRA
adapter directory to continue training instead of a fresh LoRA: it is loaded
trainable with ``PeftModel.from_pretrained(..., is_trainable=True)``, so its
own rank, alpha and target modules apply and ``adapter_config``'s LoRA fields
are not used (``kind`` must still be ``lora``).
"""

from __future__ import annotations

from typing import Any, cast

from crucible_core.errors import ConfigError, UnsupportedError
from crucible_core.ir.training import Full, LoRA, QLoRA
from crucible_local._hf import peft_quiet
from crucible_local.capabilities import ADAPTERS
from crucible_local.models import LoadedModel, adaptable_modules, module_leaf_names

__all__ = ["apply_adapter", "check_adapter", "lora_targets"]

_ATTN_HINTS = ("attn", "attention")
_MLP_HINTS = ("mlp", "feed_forward", "ffn")


def _block(name: str) -> str | None:
    for part in reversed(name.split(".")[:-1]):
        low = part.lower()
        if any(h in low for h in _ATTN_HINTS):
            return "attn"
        if any(h in low for h in _MLP_HINTS):
            return "mlp"
    return None


def _unembed_name(model: Any) -> str | None:
    out = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is out:
            return name
    return None


def _is_tied(model: Any) -> bool:
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def lora_targets(loaded: LoadedModel, lora: LoRA) -> list[str]:
    """The qualified names of the layers ``lora`` adapts (see the module docstring)."""
    import torch

    model = loaded.model
    modules = adaptable_modules(model)
    unembed = _unembed_name(model)
    selected: dict[str, None] = {}
    for target in lora.target_modules:
        if target == "all-linear":
            matches = [
                n
                for n, m in modules.items()
                if not isinstance(m, torch.nn.Embedding) and _block(n) is not None
            ]
        else:
            matches = [n for n in modules if n == target or n.endswith("." + target)]
        if not matches:
            raise ConfigError(
                f"adapter_config.target_modules: {target!r} matches no layer of model "
                f"{loaded.name!r}; its adaptable layers are: "
                f"{', '.join(module_leaf_names(model))}",
                hint="name layers by their last component (q_proj) or full name, "
                "or use 'all-linear'",
            )
        selected.update(dict.fromkeys(matches))
    if not lora.train_attn:
        selected = {n: None for n in selected if _block(n) != "attn"}
    if not lora.train_mlp:
        selected = {n: None for n in selected if _block(n) != "mlp"}
    if lora.train_unembed:
        if unembed is None:
            raise ConfigError(
                f"adapter_config.train_unembed: model {loaded.name!r} has no output projection"
            )
        selected[unembed] = None
    if unembed is not None and unembed in selected and _is_tied(model):
        raise UnsupportedError(
            f"adapter_config: model {loaded.name!r} ties its output projection ({unembed}) to "
            "the input embedding; crucible-local cannot put a LoRA adapter on a tied layer",
            hint="set train_unembed = false and leave lm_head out of target_modules, "
            "or use kind = 'full'",
        )
    if not selected:
        raise ConfigError(
            f"adapter_config: target_modules {lora.target_modules} with train_attn = "
            f"{str(lora.train_attn).lower()} and train_mlp = {str(lora.train_mlp).lower()} "
            "leave no layer to adapt",
            hint="add layers to target_modules (or 'all-linear'), or set train_attn/train_mlp "
            "back to true",
        )
    return list(selected)


def check_adapter(adapter: LoRA | QLoRA | Full) -> None:
    """Refuse an adapter kind crucible-local cannot train (before any model is built)."""
    if isinstance(adapter, QLoRA):
        raise UnsupportedError(
            f"adapter_config.kind = 'qlora' ({adapter.bits}-bit) is not supported by "
            "crucible-local: quantised LoRA needs bitsandbytes kernels and a CUDA device, and "
            "this backend runs on CPU",
            hint=f"use kind = 'lora' (same adapter, unquantised base) or 'full'; supported "
            f"adapters: {', '.join(ADAPTERS)}",
        )


def apply_adapter(
    loaded: LoadedModel,
    adapter: LoRA | QLoRA | Full,
    *,
    seed: int,
    start_from: str | None = None,
) -> Any:
    """The model to train: ``loaded.model`` wrapped by PEFT (LoRA) or all-trainable (Full);
    with ``start_from``, the outside adapter there (see the module docstring)."""
    check_adapter(adapter)
    model = loaded.model
    if start_from is not None:
        return _load_outside_adapter(model, adapter, start_from)
    if isinstance(adapter, Full):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    from crucible_local._runtime import seeded

    targets = lora_targets(loaded, adapter)
    modules = adaptable_modules(model)
    config = LoraConfig(
        r=adapter.rank,
        lora_alpha=cast(Any, adapter.alpha),  # peft annotates int; the ratio is a float
        lora_dropout=adapter.dropout,
        target_modules=targets,
        bias=adapter.bias,
        # GPT-2 style Conv1D layers store their weight transposed.
        fan_in_fan_out=any(isinstance(modules[n], Conv1D) for n in targets),
        task_type="CAUSAL_LM",
    )
    with seeded(seed), peft_quiet():
        return get_peft_model(model, config)


def _load_outside_adapter(model: Any, adapter: LoRA | QLoRA | Full, start_from: str) -> Any:
    from pathlib import Path

    if isinstance(adapter, Full):
        raise ConfigError(
            "model_spec.adapter: an outside adapter continues LoRA training, but "
            "adapter_config.kind = 'full'",
            hint="set adapter_config.kind = 'lora', or remove model_spec.adapter",
        )
    directory = Path(start_from).expanduser()
    if not (directory / "adapter_config.json").is_file():
        raise ConfigError(
            f"model_spec.adapter: {directory} is not a PEFT adapter directory (no "
            "adapter_config.json)",
            hint="point it at a directory written by PeftModel.save_pretrained or "
            "`crucible export --format peft`",
        )
    from peft import PeftModel

    try:
        with peft_quiet():
            return PeftModel.from_pretrained(model, str(directory), is_trainable=True)
    except Exception as exc:
        raise ConfigError(
            f"model_spec.adapter: cannot load the adapter at {directory} onto this base: "
            f"{type(exc).__name__}: {exc}",
            hint="use an adapter trained on the same base model (its shapes must match)",
        ) from exc

"""A ``merged`` export without building the model: LoRA deltas added tensor by tensor.

Why: ``merge_and_unload`` needs the whole model resident and peft, which
imports transformers' modeling stack (~150 MB of the process before any
weight exists). When the base is a directory of safetensors and the adapter
a plain LoRA, the merge is only ``W += (B @ A) * scaling`` per targeted
weight -- exactly what peft's ``merge_and_unload`` computes, in the same
order and dtype (float32), so the result is bit-identical. This module does
that one output shard at a time: each base tensor is copied out of its
file through ``safetensors.safe_open`` (the file closed again at once), its
delta added, and the shard written with ``safetensors.torch.save_file`` and
freed, so the weights cost about one shard of memory (``SHARD_SIZE``, 200 MB)
whatever the model's size.

Contract: :func:`plan_streaming_merge` returns None (and the caller falls
back to peft's ``merge_and_unload``) for anything this does not reproduce
exactly: a base without safetensors, adapters with DoRA, biases, embeddings,
``modules_to_save``, per-module rank/alpha patterns or transposed
(``fan_in_fan_out``) weights, or an adapter key with no base tensor. The
output has the layout :func:`transformers.PreTrainedModel.save_pretrained`
gives a float32 model: ``model-XXXXX-of-YYYYY.safetensors`` shards of at most
``shard_bytes`` (a larger tensor gets a shard of its own) and
``model.safetensors.index.json``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MergePlan",
    "map_large_allocations",
    "plan_streaming_merge",
    "release_freed_memory",
    "write_merged_shards",
]

_ADAPTER_PREFIX = "base_model.model."
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1}


@dataclass(frozen=True)
class MergePlan:
    """Where each base tensor lives, which LoRA pair (if any) merges into it, the scale."""

    #: Base tensor name -> the safetensors file holding it (in the base's own order).
    base_files: dict[str, Path]
    #: Base tensor name -> (lora_A key, lora_B key) in the adapter file.
    lora: dict[str, tuple[str, str]]
    adapter_file: Path
    scaling: float
    #: Base tensor name -> its size in bytes once float32 (output sharding).
    out_bytes: dict[str, int]


def _header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (names, dtypes, shapes), without reading data."""
    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header: dict[str, Any] = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header


def _base_files(base_dir: Path) -> list[Path] | None:
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return [base_dir / name for name in dict.fromkeys(weight_map.values())]
    single = base_dir / "model.safetensors"
    return [single] if single.is_file() else None


def plan_streaming_merge(base_dir: Path, adapter_dir: Path) -> MergePlan | None:
    """The merge of the LoRA adapter in ``adapter_dir`` into the base in ``base_dir``, or
    None when only peft's ``merge_and_unload`` can do it exactly (see the module doc)."""
    files = _base_files(base_dir)
    adapter_file = adapter_dir / "adapter_model.safetensors"
    config_file = adapter_dir / "adapter_config.json"
    if files is None or not adapter_file.is_file() or not config_file.is_file():
        return None
    cfg: dict[str, Any] = json.loads(config_file.read_text())
    if (
        cfg.get("peft_type") != "LORA"
        or cfg.get("use_dora")
        or cfg.get("fan_in_fan_out")
        or cfg.get("bias", "none") != "none"
        or cfg.get("lora_bias")
        or cfg.get("modules_to_save")
        or cfg.get("rank_pattern")
        or cfg.get("alpha_pattern")
        or cfg.get("trainable_token_indices")
        or cfg.get("layers_to_transform") is not None
        or not isinstance(cfg.get("r"), int)
    ):
        return None
    rank: int = cfg["r"]
    alpha = float(cfg.get("lora_alpha", 8))
    # peft's own expressions (LoraLayer.update_layer), so the float is the same.
    scaling = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    base_files: dict[str, Path] = {}
    out_bytes: dict[str, int] = {}
    for file in files:
        for name, info in _header(file).items():
            base_files[name] = file
            dtype: str = info["dtype"]
            if dtype not in _DTYPE_BYTES:
                return None
            width = 4 if dtype in _FLOAT_DTYPES else _DTYPE_BYTES[dtype]
            out_bytes[name] = width * math.prod(info["shape"])
    adapter = _header(adapter_file)
    lora: dict[str, tuple[str, str]] = {}
    for key, info in adapter.items():
        if not key.startswith(_ADAPTER_PREFIX) or not key.endswith(".lora_A.weight"):
            if key.endswith(".lora_B.weight") and key.startswith(_ADAPTER_PREFIX):
                continue
            return None
        module = key[len(_ADAPTER_PREFIX) : -len(".lora_A.weight")]
        b_key = f"{_ADAPTER_PREFIX}{module}.lora_B.weight"
        target = f"{module}.weight"
        if b_key not in adapter or target not in base_files or info["shape"][0] != rank:
            return None
        a_shape, b_shape = info["shape"], adapter[b_key]["shape"]
        base_shape = _header(base_files[target])[target]["shape"]
        if [b_shape[0], a_shape[1]] != base_shape:
            return None
        lora[target] = (key, b_key)
    if len(lora) * 2 != len(adapter):
        return None
    return MergePlan(base_files, lora, adapter_file, scaling, out_bytes)


def _shards(plan: MergePlan, shard_bytes: int) -> list[list[str]]:
    """Tensor names per shard, greedily in the base's order, as transformers shards."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in plan.out_bytes.items():
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


#: glibc ``mallopt`` parameter number of ``M_MMAP_THRESHOLD`` (malloc.h).
_M_MMAP_THRESHOLD = -3
#: Allocations from this size up get their own mapping, returned to the OS on free.
MMAP_THRESHOLD = 1 << 20


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return None if name is None else ctypes.CDLL(name)


def map_large_allocations() -> None:
    """Make glibc serve every allocation of :data:`MMAP_THRESHOLD` bytes or more with its own
    mapping (no-op without glibc).

    Why: glibc raises its mmap threshold to the size of each large block freed
    (up to 32 MB), after which tensors of a few MB come from the heap, and the
    merge's freed temporaries and source copies fragment it: measured, a
    188 MB shard cost 285 MB of RSS, 188 MB with this. Process-wide and
    permanent (glibc cannot restore its adaptive threshold), which costs a
    process that goes on allocating only an mmap per large allocation.
    """
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``; no-op elsewhere): freed
    blocks under glibc's mmap threshold otherwise stay in the process's RSS."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _merged_tensor(plan: MergePlan, adapter: Any, name: str) -> Any:
    """Base tensor ``name`` as a private float32 copy, with its LoRA delta added.

    The base file is opened for this one tensor and closed again, so its mapped
    pages leave the process at once (a handle kept open would keep every page
    read so far resident), and the merge writes only to memory this owns, never
    to the reader's mapping of someone's model file.
    """
    import torch
    from safetensors import safe_open

    with safe_open(str(plan.base_files[name]), framework="pt") as fh:
        source: torch.Tensor = fh.get_tensor(name)
        dtype = torch.float32 if source.is_floating_point() else source.dtype
        tensor = source.to(dtype, copy=True).contiguous()
        del source
    pair = plan.lora.get(name)
    if pair is not None:
        a = adapter.get_tensor(pair[0]).to(torch.float32)
        b = adapter.get_tensor(pair[1]).to(torch.float32)
        # peft's LoRA merge: weight.data += transpose(B @ A, fan_in_fan_out) * scaling,
        # with one temporary instead of two (the same float operations, in place).
        delta = b @ a
        delta.mul_(plan.scaling)
        tensor += delta
        del delta
    return tensor


def write_merged_shards(plan: MergePlan, out: Path, shard_bytes: int) -> list[str]:
    """Write the merged float32 weights into ``out`` (shards + index); the shard names."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    map_large_allocations()
    groups = _shards(plan, shard_bytes)
    names = [f"model-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)]
    weight_map: dict[str, str] = {}
    with safe_open(str(plan.adapter_file), framework="pt") as adapter:
        for group, shard in zip(groups, names, strict=True):
            tensors: dict[str, torch.Tensor] = {}
            for name in group:
                tensors[name] = _merged_tensor(plan, adapter, name)
                weight_map[name] = shard
            save_file(tensors, str(out / shard), metadata={"format": "pt"})
            del tensors
            release_freed_memory()
    total = sum(plan.out_bytes[n] for n in weight_map)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names

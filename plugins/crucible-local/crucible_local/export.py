"""Exporting a run's weights so they load anywhere, with the stock Hugging Face libraries.

:func:`export` is what :meth:`crucible_local.backend.LocalBackend.export`
runs; ``crucible export`` (core) calls it with a fresh temporary directory
and renames that into place afterwards, so nothing here needs to be atomic.

Formats (:data:`EXPORT_FORMATS`):

``peft``
    A standard PEFT adapter directory (``adapter_config.json`` +
    ``adapter_model.safetensors``), tokenizer and chat template included.
    ``base_model_name_or_path`` names a base that exists: the hub id (with
    its ``revision``) or the absolute model directory; for a built-in base
    (``tiny-llama``...) the base is written beside the adapter, under
    ``base/``, with ``save_pretrained``, so the pair loads offline. LoRA
    runs only: a full fine-tune has no adapter.
``merged``
    The adapter merged into the float32 base (``merge_and_unload``), saved as
    sharded safetensors (``model.safetensors.index.json`` + shards of at most
    :data:`SHARD_SIZE`) with config, generation config and tokenizer; loads
    with ``AutoModelForCausalLM.from_pretrained(dir)`` alone. A plain LoRA on
    a base directory of safetensors is merged tensor by tensor, one shard in
    memory at a time, without building the model or importing peft
    (:mod:`crucible_local.merge_stream`; the same float32 weights, bit for
    bit); anything else goes through peft's ``merge_and_unload``.
``safetensors-full``
    The same full weights in one unsharded ``model.safetensors``, in the
    run's training dtype (``model_spec.dtype``).
``onnx``
    The merged float32 model as ``model.onnx`` (``torch.onnx.export``, the
    dynamo exporter, past key values off: input ``input_ids`` [batch, seq],
    output ``logits`` [batch, seq, vocab]), with ``config.json`` and the
    tokenizer. Needs the ``onnx`` extra (onnx, onnxscript; onnxruntime to
    verify).
``gguf``
    The merged float32 model as ``model.gguf`` through the ``gguf`` package's
    writer, for the llama architecture only (see
    :mod:`crucible_local.gguf_export`); other architectures are refused with
    the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crucible_core.errors import UnsupportedError
from crucible_local._hf import offline, peft_quiet
from crucible_local.capabilities import EXPORT_FORMATS, TINY_MODELS
from crucible_local.checkpoints import find_weights_dir, path_from_uri

if TYPE_CHECKING:
    from crucible_core.ir.backend import CheckpointRef
    from crucible_core.ir.training import ModelSpec

__all__ = [
    "EXPORT_FORMATS",
    "SHARD_SIZE",
    "ExportedModel",
    "check_export",
    "check_exportable",
    "export",
    "load_trained",
]

#: Largest shard of a ``merged`` export.
SHARD_SIZE = "200MB"
#: :data:`SHARD_SIZE` in bytes (transformers counts MB as 10**6 bytes).
SHARD_BYTES = 200 * 10**6
#: Where a ``peft`` export of a built-in base keeps that base.
BASE_SUBDIR = "base"


@dataclass
class ExportedModel:
    """What an export wrote: enough for a model card and a verification."""

    format: str
    #: The base a ``peft`` export names (hub id or path); None for full-weight formats.
    base: str | None
    #: Python that loads the export with the stock libraries (``{out}`` = its directory).
    load_code: str
    #: Files written, relative to the output directory.
    files: list[str] = field(default_factory=list)


def _is_lora(directory: Path) -> bool:
    return (directory / "adapter_config.json").is_file()


def load_trained(model: ModelSpec, checkpoint: CheckpointRef) -> tuple[Any, Any, bool]:
    """``(torch model, LocalTokenizer, is_lora)`` with the checkpoint's sampler weights, in
    float32, in eval mode: the PEFT model for a LoRA run, the full model otherwise."""
    import msgspec

    from crucible_local.backend import LocalBackend

    offline()
    fp32 = msgspec.structs.replace(model, dtype="float32")
    directory = find_weights_dir(path_from_uri(checkpoint.uri), prefer="sampler")
    backend = LocalBackend()
    try:
        sampler = backend.load_sampler(fp32, checkpoint)
    finally:
        backend.close()
    torch_model: Any = sampler.torch_model
    torch_model.eval()
    return torch_model, sampler.tokenizer, _is_lora(directory)


def _onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


def _check_format(fmt: str, is_lora: bool) -> None:
    if fmt == "gguf":
        import importlib.util

        if importlib.util.find_spec("gguf") is None:
            raise UnsupportedError(
                "--format gguf: the gguf package is not installed",
                hint="pip install 'crucible-local[gguf]'",
            )
    if fmt == "onnx" and not _onnx_available():
        raise UnsupportedError(
            "--format onnx: the onnx and onnxscript packages are not installed",
            hint="pip install 'crucible-local[onnx]'",
        )
    if fmt not in EXPORT_FORMATS:
        raise UnsupportedError(
            f"--format {fmt}: crucible-local exports {', '.join(EXPORT_FORMATS)}",
            hint=f"formats: {', '.join(EXPORT_FORMATS)}",
        )
    if fmt == "peft" and not is_lora:
        raise UnsupportedError(
            "--format peft: this run trained every weight (adapter_config.kind = 'full'), so "
            "it has no adapter to export",
            hint="export it with --format merged or safetensors-full",
        )


def export(
    model: ModelSpec, checkpoint: CheckpointRef, fmt: str, out: Path, *, final: Path | None = None
) -> ExportedModel:
    """Write ``checkpoint``'s weights as ``fmt`` into the (empty) directory ``out``.

    ``final`` is where ``out`` will be renamed to (paths recorded inside the
    export, such as a built-in base's directory, name it); default ``out``.
    """
    offline()
    directory = find_weights_dir(path_from_uri(checkpoint.uri), prefer="sampler")
    check_export(model, fmt, lora=_is_lora(directory))
    final = (final or out).resolve()
    if fmt == "merged" and _is_lora(directory):
        streamed = _export_merged_streaming(model, directory, out)
        if streamed is not None:
            return streamed
    torch_model, tokenizer, is_lora = load_trained(model, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "peft":
        result = _export_peft(model, torch_model, out, final)
    elif fmt == "onnx":
        result = _export_onnx(torch_model, out, is_lora)
    elif fmt == "gguf":
        from crucible_local.gguf_export import export_gguf

        result = ExportedModel(
            format="gguf", base=None, load_code=export_gguf(torch_model, tokenizer, out, is_lora)
        )
    else:
        result = _export_full(model, torch_model, out, fmt, is_lora)
    tokenizer.hf.save_pretrained(str(out))
    result.files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return result


def _base_ref(model: ModelSpec) -> str:
    if model.path is not None:
        return str(Path(model.path).expanduser().resolve())
    candidate = Path(model.name).expanduser()
    if candidate.is_dir():
        return str(candidate.resolve())
    return model.name


def _export_peft(model: ModelSpec, peft_model: Any, out: Path, final: Path) -> ExportedModel:
    with peft_quiet():
        peft_model.save_pretrained(str(out), save_embedding_layers=False)
    if model.name in TINY_MODELS and model.path is None:
        # A built-in base exists only in code: write it, so the pair loads offline.
        base_model = peft_model.get_base_model()
        with peft_quiet():
            clean = peft_model.unload() if hasattr(peft_model, "unload") else base_model
        clean.save_pretrained(str(out / BASE_SUBDIR))
        base = str(final / BASE_SUBDIR)
        load_base = f'"{{out}}/{BASE_SUBDIR}"'
        revision = None
    else:
        base = _base_ref(model)
        load_base = json.dumps(base)
        revision = model.revision
    cfg_path = out / "adapter_config.json"
    cfg: dict[str, Any] = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base
    if revision:
        cfg["revision"] = revision
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    rev = f", revision={revision!r}" if revision else ""
    code = (
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"base = AutoModelForCausalLM.from_pretrained({load_base}{rev})\n"
        'model = PeftModel.from_pretrained(base, "{out}")\n'
        'tokenizer = AutoTokenizer.from_pretrained("{out}")\n'
    )
    return ExportedModel(format="peft", base=base, load_code=code)


_FULL_LOAD_CODE = (
    "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
    'model = AutoModelForCausalLM.from_pretrained("{out}")\n'
    'tokenizer = AutoTokenizer.from_pretrained("{out}")\n'
)


def _export_merged_streaming(
    model: ModelSpec, adapter_dir: Path, out: Path
) -> ExportedModel | None:
    """The ``merged`` export by :mod:`crucible_local.merge_stream` (no model built, no
    peft), or None when that cannot reproduce ``merge_and_unload`` exactly (built-in
    base, no safetensors, an adapter beyond plain LoRA)."""
    import msgspec

    from crucible_local.merge_stream import plan_streaming_merge, write_merged_shards
    from crucible_local.models import load_tokenizer, model_dir

    base_dir = model_dir(model)
    if base_dir is None:
        return None
    plan = plan_streaming_merge(base_dir, adapter_dir)
    if plan is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    write_merged_shards(plan, out, SHARD_BYTES)
    # Only now the config and tokenizer: reading a model's config class imports
    # transformers' model-loading modules (~60 MB with torch.distributed), which then
    # sit beside the shards' freed memory instead of under the largest shard.
    _write_float32_configs(base_dir, out, _base_ref(model))
    tokenizer = load_tokenizer(msgspec.structs.replace(model, dtype="float32"))
    tokenizer.hf.save_pretrained(str(out))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return ExportedModel(format="merged", base=None, load_code=_FULL_LOAD_CODE, files=files)


def _write_float32_configs(base_dir: Path, out: Path, name_or_path: str) -> None:
    """``config.json`` and ``generation_config.json`` as ``save_pretrained`` writes them for
    the base loaded in float32 (transformers' configuration classes only, no modeling)."""
    import torch
    from transformers import AutoConfig, GenerationConfig

    config: Any = AutoConfig.from_pretrained(str(base_dir), local_files_only=True)
    config.dtype = torch.float32
    config.name_or_path = name_or_path
    config.save_pretrained(str(out))
    if (base_dir / "generation_config.json").is_file():
        generation: Any = GenerationConfig.from_pretrained(str(base_dir), local_files_only=True)
    else:
        generation = GenerationConfig.from_model_config(config)
    generation.save_pretrained(str(out))


def _export_full(
    model: ModelSpec, torch_model: Any, out: Path, fmt: str, is_lora: bool
) -> ExportedModel:
    import torch

    if is_lora:
        with peft_quiet():
            full: Any = torch_model.merge_and_unload()
    else:
        full = torch_model
    if fmt == "safetensors-full" and model.dtype == "bfloat16":
        full = full.to(torch.bfloat16)
    full.config.name_or_path = _base_ref(model)
    if fmt == "merged":
        full.save_pretrained(str(out), max_shard_size=SHARD_SIZE, safe_serialization=True)
        if (
            not (out / "model.safetensors.index.json").exists()
            and (out / "model.safetensors").exists()
        ):
            _write_single_shard_index(out)
    else:
        full.save_pretrained(str(out), max_shard_size="1000GB", safe_serialization=True)
    if full.generation_config is not None:
        full.generation_config.save_pretrained(str(out))
    return ExportedModel(format=fmt, base=None, load_code=_FULL_LOAD_CODE)


def _export_onnx(torch_model: Any, out: Path, is_lora: bool) -> ExportedModel:
    import contextlib
    import sys
    import warnings

    import torch

    from crucible_local.models import context_length_of

    if is_lora:
        with peft_quiet():
            full: Any = torch_model.merge_and_unload()
    else:
        full = torch_model
    full.config.use_cache = False

    class _Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, use_cache=False).logits

    seq = torch.export.Dim("seq", min=2, max=context_length_of(full) or 4096)
    example = torch.tensor([[1, 2, 3, 4]], dtype=torch.long)
    # The exporter reports progress on stdout; keep stdout for the command's own output.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Logits(full).eval(),
            (example,),
            str(out / "model.onnx"),
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {1: seq}},
            dynamo=True,
            external_data=False,
        )
    full.config.save_pretrained(str(out))
    code = (
        "import onnxruntime, numpy\n"
        "from transformers import AutoTokenizer\n"
        'session = onnxruntime.InferenceSession("{out}/model.onnx")\n'
        'tokenizer = AutoTokenizer.from_pretrained("{out}")\n'
        'ids = tokenizer("Hello", return_tensors="np")["input_ids"].astype(numpy.int64)\n'
        'logits = session.run(None, {"input_ids": ids})[0]\n'
    )
    return ExportedModel(format="onnx", base=None, load_code=code)


def _write_single_shard_index(out: Path) -> None:
    """A model smaller than one shard: still the sharded layout (index + one shard), so
    every ``merged`` export has the same shape whatever the model's size."""
    from safetensors import safe_open

    single = out / "model.safetensors"
    shard = "model-00001-of-00001.safetensors"
    with safe_open(str(single), framework="pt") as fh:
        keys = list(fh.keys())
    size = single.stat().st_size
    single.rename(out / shard)
    index = {"metadata": {"total_size": size}, "weight_map": dict.fromkeys(sorted(keys), shard)}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def check_export(model: ModelSpec, fmt: str, *, lora: bool) -> None:
    """Refuse (UnsupportedError naming why) a format crucible-local cannot write for this
    model, before anything is trained or loaded: what ``crucible plan`` asks when
    ``checkpoint_policy.format`` is an export format. ``lora``: the run trains an
    adapter (``peft`` needs one)."""
    _check_format(fmt, lora)
    if fmt == "gguf":
        from crucible_local.gguf_export import check_architecture
        from crucible_local.models import model_type_of

        check_architecture(model_type_of(model))


def check_exportable(fmt: str) -> None:
    """Refuse a format crucible-local cannot write, before anything is loaded."""
    if fmt not in EXPORT_FORMATS:
        _check_format(fmt, True)

"""``crucible export --format gguf``: a merged llama-architecture model as one GGUF file.

Written with the ``gguf`` package's ``GGUFWriter`` the way llama.cpp's own
converter writes a Hugging Face Llama: tensor names from ``TensorNameMap``,
the query and key projections permuted to llama.cpp's rotary layout
(:func:`permute_qk`), float32 tensors, the hyper-parameters llama.cpp reads,
and the tokenizer as a ``gpt2`` (byte-level BPE) vocabulary with its merges
and chat template. Architectures other than ``llama`` are refused
(UnsupportedError, exit 2): their tensor layouts differ and are not written
here. :func:`expected_tensors` is what a verification compares the file with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crucible_core.errors import UnsupportedError
from crucible_local._hf import peft_quiet

__all__ = [
    "GGUF_ARCHITECTURES",
    "GGUF_FILE",
    "check_architecture",
    "expected_tensors",
    "export_gguf",
    "permute_qk",
]

GGUF_FILE = "model.gguf"
#: The transformers ``model_type`` values written as GGUF.
GGUF_ARCHITECTURES: tuple[str, ...] = ("llama",)


def check_architecture(model_type: str) -> None:
    """Refuse (UnsupportedError, naming why) a model whose architecture is not written as
    GGUF here."""
    if model_type not in GGUF_ARCHITECTURES:
        raise UnsupportedError(
            f"--format gguf: architecture {model_type!r} is not supported (crucible exports "
            "gguf for llama-architecture models only, whose tensor layout llama.cpp's llama "
            "loader reads)",
            hint="export it as merged or safetensors-full and convert it with llama.cpp's "
            "convert_hf_to_gguf.py, or as onnx",
        )


def permute_qk(weight: Any, n_head: int) -> Any:
    """llama.cpp's rotary layout of a q/k projection (numpy array, rows = heads x dim)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _merged(torch_model: Any, is_lora: bool) -> Any:
    if not is_lora:
        return torch_model
    with peft_quiet():
        return torch_model.merge_and_unload()


def expected_tensors(full: Any) -> dict[str, Any]:
    """GGUF tensor name -> float32 numpy array, for the merged model ``full``."""
    import gguf

    config = full.config
    check_architecture(str(getattr(config, "model_type", "?")))
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = config.num_key_value_heads or n_head
    out: dict[str, Any] = {}
    for name, tensor in full.state_dict().items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UnsupportedError(f"--format gguf: no GGUF name for tensor {name!r}")
        data = tensor.detach().float().numpy()
        if name.endswith("q_proj.weight"):
            data = permute_qk(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = permute_qk(data, n_kv)
        out[new] = data
    return out


def export_gguf(torch_model: Any, tokenizer: Any, out: Path, is_lora: bool) -> str:
    """Write ``out/model.gguf``; return Python that reads it back (``{out}`` = the directory)."""
    import gguf

    full = _merged(torch_model, is_lora)
    tensors = expected_tensors(full)
    config = full.config
    writer = gguf.GGUFWriter(str(out / GGUF_FILE), "llama")
    writer.add_name(str(getattr(config, "name_or_path", "") or "crucible-export"))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads or config.num_attention_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    rope: Any = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    writer.add_rope_freq_base(float(theta or getattr(config, "rope_theta", 10000.0)))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(int(config.vocab_size))
    _add_tokenizer(writer, tokenizer)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return (
        "from gguf import GGUFReader\n"
        'reader = GGUFReader("{out}/model.gguf")\n'
        "print([t.name for t in reader.tensors])\n"
        "# llama.cpp: llama-cli -m {out}/model.gguf\n"
    )


def _add_tokenizer(writer: Any, tokenizer: Any) -> None:
    import gguf

    hf = tokenizer.hf
    size = len(hf)
    tokens = [str(t) for t in hf.convert_ids_to_tokens(list(range(size)))]
    special = set(hf.all_special_ids)
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(size)]
    model: Any = json.loads(hf.backend_tokenizer.to_str()).get("model", {})
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    if hf.bos_token_id is not None:
        writer.add_bos_token_id(int(hf.bos_token_id))
    if hf.eos_token_id is not None:
        writer.add_eos_token_id(int(hf.eos_token_id))
    if hf.pad_token_id is not None:
        writer.add_pad_token_id(int(hf.pad_token_id))
    if isinstance(hf.chat_template, str):
        writer.add_chat_template(hf.chat_template)

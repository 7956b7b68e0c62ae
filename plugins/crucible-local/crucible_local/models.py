"""Models without downloads: the built-in tiny models, or a Hugging Face directory on disk.

``ModelSpec.name`` picks a built-in model (``tiny-llama``, ``tiny-gpt2``): a
transformers model class with a tiny config, its weights initialised from a
fixed seed (``options.init_seed``, default 0), so every process builds the
same base weights. Any other model is a Hugging Face causal LM, found in this
order (the first that applies wins):

1. ``ModelSpec.path``: a directory written by ``save_pretrained``;
2. a ``name`` that is an existing directory;
3. a ``name`` that is a hub id (``org/model``), resolved in the local Hugging
   Face cache (``HF_HUB_CACHE`` / ``HF_HOME``) at ``ModelSpec.revision``
   (a branch, tag or commit; default ``main``).

Nothing is ever fetched: a hub id missing from the cache is a ConfigError
naming the model and the command that pre-downloads it (exit 2). The model's
own tokenizer and chat template come from the same directory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from crucible_core.errors import ConfigError, UnsupportedError
from crucible_local._hf import offline
from crucible_local.capabilities import MAX_CONTEXT_LENGTH, TINY_MODELS
from crucible_local.tokenizer import (
    BYTE_TOKENIZER_NAME,
    SPECIAL_TOKENS,
    LocalTokenizer,
    build_byte_tokenizer,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from crucible_core.ir.training import ModelSpec

__all__ = [
    "TINY_OPTIONS",
    "LoadedModel",
    "adaptable_modules",
    "context_length_of",
    "load_model",
    "load_tokenizer",
    "module_leaf_names",
    "torch_dtype",
    "write_tiny_model_dir",
]

#: ``ModelSpec.options`` a built-in model accepts, with their defaults.
TINY_OPTIONS: dict[str, int] = {
    "init_seed": 0,
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 128,
    "context_length": MAX_CONTEXT_LENGTH,
}
#: Larger than transformers' default 0.02 so that a frozen random base still
#: lets a LoRA adapter reach low losses within a few dozen steps.
_INIT_RANGE = 0.1
_BYTE_TOKENIZER_ALIASES = (BYTE_TOKENIZER_NAME, "byte")
_VOCAB = 256 + len(SPECIAL_TOKENS)
_BOS, _EOS, _PAD = 256, 257, 258


@dataclass
class LoadedModel:
    """A freshly built or loaded model with its tokenizer and limits."""

    model: PreTrainedModel
    tokenizer: LocalTokenizer
    name: str
    context_length: int
    #: ``"builtin"`` or the directory the weights came from.
    source: str

    @property
    def vocab_rows(self) -> int:
        """Rows of the input embedding: token ids must be below this."""
        emb: Any = self.model.get_input_embeddings()
        return int(emb.num_embeddings)


def torch_dtype(spec: ModelSpec) -> torch.dtype:
    """The torch dtype of ``model_spec.dtype``; float16 is refused on CPU."""
    import torch

    if spec.dtype == "float16":
        raise UnsupportedError(
            "model_spec.dtype = 'float16' is not supported by crucible-local (CPU training "
            "in float16 underflows without a GPU loss scaler)",
            hint="use dtype = 'float32' (the default) or 'bfloat16'",
        )
    return torch.bfloat16 if spec.dtype == "bfloat16" else torch.float32


@functools.cache
def _byte_tokenizer() -> LocalTokenizer:
    return LocalTokenizer(build_byte_tokenizer(), name=BYTE_TOKENIZER_NAME)


def model_dir(spec: ModelSpec) -> Path | None:
    """The directory ``spec``'s base weights are loaded from (``path``, a directory
    ``name``, or the hub cache snapshot of a hub id); None for a built-in model."""
    return _model_dir(spec)


def _model_dir(spec: ModelSpec) -> Path | None:
    if spec.path is not None:
        return Path(spec.path).expanduser()
    if spec.name in TINY_MODELS:
        return None
    if Path(spec.name).expanduser().is_dir():
        return Path(spec.name).expanduser()
    if _looks_like_hub_id(spec.name):
        return hub_snapshot(spec.name, spec.revision)
    return None


#: The transformers ``model_type`` of each built-in model.
TINY_MODEL_TYPES: dict[str, str] = {"tiny-llama": "llama", "tiny-gpt2": "gpt2"}


def model_type_of(spec: ModelSpec) -> str:
    """The transformers ``model_type`` of ``spec``'s model, read from its ``config.json``
    without loading weights (``crucible plan`` asks it: gguf is for llama only)."""
    import json

    directory = _model_dir(spec)
    if directory is None:
        if spec.name not in TINY_MODEL_TYPES:
            raise _unknown_model(spec)
        return TINY_MODEL_TYPES[spec.name]
    _check_model_dir(directory)
    config: Any = json.loads((directory / "config.json").read_text())
    return str(config.get("model_type", "?")) if isinstance(config, dict) else "?"


def _looks_like_hub_id(name: str) -> bool:
    """``org/model`` (one slash, no path syntax): what the hub accepts as a repository id."""
    parts = name.split("/")
    return len(parts) == 2 and all(
        p and p not in (".", "..") and all(c.isalnum() or c in "-_." for c in p) for p in parts
    )


def hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """The local snapshot directory of hub model ``repo_id`` at ``revision``, from the cache.

    Never downloads (``local_files_only``), whatever ``HF_HUB_OFFLINE`` says:
    crucible-local runs without a network. Missing: a ConfigError naming the
    model and how to pre-download it.
    """
    offline()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    at = f" at revision {revision!r}" if revision else ""
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        from huggingface_hub.constants import HF_HUB_CACHE

        rev = f" --revision {revision}" if revision else ""
        raise ConfigError(
            f"model_spec.name: model {repo_id!r}{at} is not in the local Hugging Face cache "
            f"({HF_HUB_CACHE}) and crucible-local never downloads ({type(exc).__name__})",
            hint=f"pre-download it on a machine with network: `hf download {repo_id}{rev}` "
            "(then copy the cache, or set HF_HUB_CACHE to it), or save it with "
            "save_pretrained and set model_spec.path to that directory",
        ) from None


def _unknown_model(spec: ModelSpec) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(spec.name, list(TINY_MODELS), n=1)
    return ConfigError(
        f"model_spec.name: crucible-local has no model {spec.name!r}; "
        f"its built-in models are: {', '.join(TINY_MODELS)}",
        hint=(f"did you mean {close[0]!r}? " if close else "")
        + "to use a Hugging Face model, set model_spec.name to its hub id (org/model, "
        "pre-downloaded into the local cache) or model_spec.path to its directory on disk "
        "(config.json, weights and tokenizer files); crucible-local downloads nothing",
    )


def _tiny_options(spec: ModelSpec) -> dict[str, int]:
    unknown = sorted(set(spec.options) - set(TINY_OPTIONS))
    if unknown:
        raise ConfigError(
            f"model_spec.options: {', '.join(map(repr, unknown))} not understood by "
            f"built-in model {spec.name!r}",
            hint=f"accepted options: {', '.join(TINY_OPTIONS)}",
        )
    out = dict(TINY_OPTIONS)
    for key, value in spec.options.items():
        low = 0 if key == "init_seed" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(
                f"model_spec.options.{key}: expected an integer >= {low}, got {value!r}"
            )
        out[key] = value
    if out["hidden_size"] % out["num_heads"]:
        raise ConfigError(
            f"model_spec.options: hidden_size ({out['hidden_size']}) must be a multiple of "
            f"num_heads ({out['num_heads']})"
        )
    return out


def _build_tiny(spec: ModelSpec) -> PreTrainedModel:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from crucible_local._runtime import seeded

    o = _tiny_options(spec)
    common: dict[str, Any] = {
        "vocab_size": _VOCAB,
        "bos_token_id": _BOS,
        "eos_token_id": _EOS,
        "pad_token_id": _PAD,
        "initializer_range": _INIT_RANGE,
    }
    model: PreTrainedModel
    if spec.name == "tiny-llama":
        heads = o["num_heads"]
        config = LlamaConfig(
            hidden_size=o["hidden_size"],
            intermediate_size=o["intermediate_size"],
            num_hidden_layers=o["num_layers"],
            num_attention_heads=heads,
            num_key_value_heads=heads // 2 if heads % 2 == 0 else heads,
            max_position_embeddings=o["context_length"],
            tie_word_embeddings=False,
            **common,
        )
        with seeded(o["init_seed"]):
            model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(
            n_embd=o["hidden_size"],
            n_inner=o["intermediate_size"],
            n_layer=o["num_layers"],
            n_head=o["num_heads"],
            n_positions=o["context_length"],
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
        with seeded(o["init_seed"]):
            model = GPT2LMHeadModel(config)
    model.config.name_or_path = spec.name
    return model


def context_length_of(model: PreTrainedModel) -> int | None:
    """The longest sequence the model's config allows (None if it does not say)."""
    config: Any = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _context(spec: ModelSpec, model: PreTrainedModel) -> int:
    native = context_length_of(model)
    if spec.max_seq_len is None:
        if native is None:
            raise ConfigError(
                f"model {spec.name!r} does not declare its context length",
                hint="set model_spec.max_seq_len",
            )
        return native
    if native is not None and spec.max_seq_len > native:
        raise ConfigError(
            f"model_spec.max_seq_len = {spec.max_seq_len} exceeds the context of model "
            f"{spec.name!r} ({native} tokens)",
            hint=f"set max_seq_len <= {native} or leave it unset",
        )
    return spec.max_seq_len


def load_tokenizer(spec: ModelSpec) -> LocalTokenizer:
    """The tokenizer of ``spec`` without building the model."""
    directory = _model_dir(spec)
    if spec.tokenizer in _BYTE_TOKENIZER_ALIASES:
        return _byte_tokenizer()
    if directory is None:
        if spec.name not in TINY_MODELS:
            raise _unknown_model(spec)
        if spec.tokenizer is not None:
            raise ConfigError(
                f"model_spec.tokenizer: built-in model {spec.name!r} uses the byte-level "
                f"tokenizer, not {spec.tokenizer!r}",
                hint=f"leave tokenizer unset or set it to {BYTE_TOKENIZER_NAME!r}",
            )
        return _byte_tokenizer()
    source = Path(spec.tokenizer).expanduser() if spec.tokenizer else directory
    return _load_tokenizer_dir(source, field="model_spec.tokenizer" if spec.tokenizer else None)


def _load_tokenizer_dir(source: Path, *, field: str | None) -> LocalTokenizer:
    offline()
    from transformers import AutoTokenizer

    where = field or "model_spec.path"
    if not source.is_dir():
        raise ConfigError(
            f"{where}: {source} is not a directory",
            hint="point it at a directory with tokenizer files (tokenizer.json, "
            "tokenizer_config.json); crucible-local downloads nothing",
        )
    try:
        hf: Any = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except Exception as exc:
        raise ConfigError(
            f"{where}: cannot load a tokenizer from {source}: {type(exc).__name__}: {exc}",
            hint="the directory needs tokenizer files (tokenizer.json, tokenizer_config.json), "
            f"or set model_spec.tokenizer to a tokenizer directory or {BYTE_TOKENIZER_NAME!r}",
        ) from exc
    return LocalTokenizer(hf, name=str(getattr(hf, "name_or_path", "") or source))


def load_model(spec: ModelSpec) -> LoadedModel:
    """Build the built-in model ``spec.name`` or load the directory ``spec.path``.

    The model is in training mode, on CPU, in ``spec.dtype``. Errors say which
    field is wrong and what would work.
    """
    offline()
    dtype = torch_dtype(spec)
    directory = _model_dir(spec)
    if directory is None:
        if spec.name not in TINY_MODELS:
            raise _unknown_model(spec)
        tokenizer = load_tokenizer(spec)
        model = _build_tiny(spec)
        source = "builtin"
    else:
        if spec.options:
            raise ConfigError(
                f"model_spec.options: {', '.join(map(repr, sorted(spec.options)))} only apply "
                "to the built-in models; a model directory carries its own config",
                hint="remove model_spec.options, or edit config.json in the model directory",
            )
        _check_model_dir(directory)
        tokenizer = load_tokenizer(spec)
        model = _load_dir(directory, dtype)
        source = str(directory.resolve())
    if model.dtype != dtype:
        model = cast(Any, model).to(dtype)
    model.train()
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=spec.name,
        context_length=_context(spec, model),
        source=source,
    )
    if tokenizer.vocab_size > loaded.vocab_rows:
        raise ConfigError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens but model "
            f"{spec.name!r} embeds only {loaded.vocab_rows}",
            hint="use the tokenizer the model was trained with (model_spec.tokenizer)",
        )
    return loaded


def _check_model_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise ConfigError(
            f"model_spec.path: {directory} is not a directory",
            hint="point it at a Hugging Face model directory (config.json, weights and "
            "tokenizer files); crucible-local downloads nothing",
        )
    if not (directory / "config.json").is_file():
        raise ConfigError(
            f"model_spec.path: {directory} has no config.json, so it is not a Hugging Face "
            "model directory",
            hint="save one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir)",
        )


def _load_dir(directory: Path, dtype: torch.dtype) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(directory), local_files_only=True, dtype=dtype
        )
    except Exception as exc:
        raise ConfigError(
            f"model_spec.path: cannot load a causal LM from {directory}: "
            f"{type(exc).__name__}: {exc}",
            hint="the directory needs config.json and model.safetensors (or pytorch_model.bin) "
            "of a transformers causal language model",
        ) from exc
    return model


def adaptable_modules(model: Any) -> dict[str, Any]:
    """Qualified name -> module, for every layer LoRA can adapt (Linear, Conv1D, Embedding)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, Conv1D, torch.nn.Embedding)
    return {n: m for n, m in model.named_modules() if n and isinstance(m, kinds)}


def module_leaf_names(model: Any) -> list[str]:
    """The distinct last components of the adaptable modules' names (q_proj, c_attn, ...)."""
    return sorted({name.rsplit(".", 1)[-1] for name in adaptable_modules(model)})


def write_tiny_model_dir(
    path: str | Path, name: str = "tiny-llama", *, options: dict[str, int] | None = None
) -> Path:
    """Write the built-in model ``name`` as a Hugging Face model directory; return its path.

    The directory (config.json, model.safetensors, tokenizer files with the
    chat template) loads with ``ModelSpec(name=..., path=str(path))`` here and
    with ``AutoModelForCausalLM.from_pretrained`` anywhere.
    """
    from crucible_core.ir.training import ModelSpec

    loaded = load_model(ModelSpec(name=name, options=dict(options or {})))
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(str(out))
    loaded.tokenizer.hf.save_pretrained(str(out))
    return out

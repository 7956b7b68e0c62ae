"""Models and tokenizer that need no download; model directories on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from crucible_local.models import load_model, module_leaf_names, write_tiny_model_dir
from crucible_local.tokenizer import SPECIAL_TOKENS, build_byte_tokenizer

from crucible_core.contracts import Tokenizer
from crucible_core.errors import ConfigError
from crucible_core.ir.training import ModelSpec

LLAMA_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_byte_tokenizer_round_trips_any_text() -> None:
    tok = load_model(ModelSpec(name="tiny-llama")).tokenizer
    assert isinstance(tok, Tokenizer)
    text = "héllo wörld 😀 <tag> \n\t end"
    ids = tok.encode(text)
    assert ids[:2] == [ord("h"), 0xC3]  # token i < 256 is the byte i
    assert tok.decode(ids) == text
    assert tok.vocab_size == 256 + len(SPECIAL_TOKENS) == 263
    assert tok.eos_token_id == 257
    assert tok.encode("<|eos|>") == [257]


def test_chat_template_renders_roles_and_generation_prompt() -> None:
    tok = load_model(ModelSpec(name="tiny-llama")).tokenizer
    ids = tok.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    )
    assert tok.decode(ids) == "<|bos|><|system|>be brief<|eos|><|user|>hi<|eos|><|assistant|>"
    assert tok.chat_template is not None


def test_tiny_llama_has_llama_module_names_and_is_small() -> None:
    loaded = load_model(ModelSpec(name="tiny-llama"))
    names = module_leaf_names(loaded.model)
    assert set(LLAMA_LAYERS) <= set(names)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in loaded.model.parameters()) < 200_000
    assert loaded.context_length == 512
    assert loaded.vocab_rows == 263


def test_tiny_gpt2_builds() -> None:
    loaded = load_model(ModelSpec(name="tiny-gpt2"))
    assert type(loaded.model).__name__ == "GPT2LMHeadModel"
    assert {"c_attn", "c_proj", "c_fc"} <= set(module_leaf_names(loaded.model))


def test_initialisation_is_seeded() -> None:
    a = load_model(ModelSpec(name="tiny-llama")).model.state_dict()
    b = load_model(ModelSpec(name="tiny-llama")).model.state_dict()
    c = load_model(ModelSpec(name="tiny-llama", options={"init_seed": 1})).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_building_a_model_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model(ModelSpec(name="tiny-llama"))
    assert torch.equal(torch.rand(3), expected)


def test_options_resize_the_model() -> None:
    loaded = load_model(ModelSpec(name="tiny-llama", options={"hidden_size": 32, "num_layers": 1}))
    assert loaded.model.config.hidden_size == 32
    assert loaded.model.config.num_hidden_layers == 1


def test_model_directory_loads_with_the_same_weights(tmp_path: Path) -> None:
    directory = write_tiny_model_dir(tmp_path / "my-model")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in directory.iterdir()
    }
    builtin = load_model(ModelSpec(name="tiny-llama"))
    from_dir = load_model(ModelSpec(name="my-model", path=str(directory)))
    assert from_dir.source == str(directory.resolve())
    ids = builtin.tokenizer.encode("hello there")
    assert from_dir.tokenizer.encode("hello there") == ids
    assert from_dir.tokenizer.chat_template == builtin.tokenizer.chat_template
    x = torch.tensor([ids])
    builtin.model.eval()
    from_dir.model.eval()
    with torch.no_grad():
        assert torch.equal(builtin.model(input_ids=x).logits, from_dir.model(input_ids=x).logits)
    # A name that is a directory works too, and hub access is off once models load.
    assert load_model(ModelSpec(name=str(directory))).context_length == 512
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_transformers_loads_the_written_directory(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = write_tiny_model_dir(tmp_path / "gpt2-dir", "tiny-gpt2")
    model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert tok.decode(tok.encode("abc", add_special_tokens=False)) == "abc"


def test_max_seq_len_caps_the_context() -> None:
    assert load_model(ModelSpec(name="tiny-llama", max_seq_len=64)).context_length == 64
    with pytest.raises(ConfigError, match=r"max_seq_len = 4096 exceeds the context"):
        load_model(ModelSpec(name="tiny-llama", max_seq_len=4096))


def test_bfloat16_models_load() -> None:
    loaded = load_model(ModelSpec(name="tiny-llama", dtype="bfloat16"))
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_a_fresh_byte_tokenizer_saves_and_reloads(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = build_byte_tokenizer()
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert again.encode("hi <|eos|>", add_special_tokens=False) == [104, 105, 32, 257]

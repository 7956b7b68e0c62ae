"""Fixtures: a real byte-level tokenizer, a plugin host with this plugin, file writers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from crucible_core.plugins import PluginHost, reset_host

SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)


def build_tokenizer(specials: Sequence[str] = SPECIALS) -> Tokenizer:
    """256 byte tokens (GPT-2's byte alphabet, no merges) plus ``specials`` as single tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials))
    return tok


class ByteTokenizer:
    """Satisfies ``crucible_core.contracts.Tokenizer`` over a ``tokenizers.Tokenizer``."""

    def __init__(
        self,
        tok: Tokenizer | None = None,
        *,
        chat_template: str | None = None,
        eos: str | None = "<|endoftext|>",
        name: str = "test-bytes",
    ) -> None:
        self.tok = tok if tok is not None else build_tokenizer()
        self._chat_template = chat_template
        self._eos = self.tok.token_to_id(eos) if eos is not None else None
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def eos_token_id(self) -> int | None:
        return self._eos

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)


CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def tok() -> ByteTokenizer:
    """The byte tokenizer without a chat template (so the default template is ``plain``)."""
    return ByteTokenizer()


@pytest.fixture(scope="session")
def tok_factory() -> Callable[..., ByteTokenizer]:
    """Build a ByteTokenizer with options (chat_template, eos...)."""
    return ByteTokenizer


@pytest.fixture
def host() -> Iterator[PluginHost]:
    """A fresh host with only the built-ins and this plugin, installed process-wide."""
    import crucible_datasets.plugin as plugin

    h = PluginHost(autoload=False)
    h.add_plugin(plugin, name="datasets", distribution="crucible-datasets", version="0.1.0")
    reset_host(h)
    yield h
    reset_host(None)


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write rows (dicts, or raw strings for bad lines) as JSONL; returns the path."""

    def write(rows: Sequence[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    return write

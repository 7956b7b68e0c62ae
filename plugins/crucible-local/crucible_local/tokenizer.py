"""Tokenizers: the built-in byte-level one, and a wrapper satisfying the Tokenizer contract.

The built-in tokenizer needs no download: token ``i < 256`` is the byte ``i``
(via the ``tokenizers`` ByteLevel alphabet, so any UTF-8 text round-trips),
followed by seven special tokens. It is wrapped in a transformers
``PreTrainedTokenizerFast`` so that PEFT/transformers tooling (``save_pretrained``,
``apply_chat_template``, ``AutoTokenizer.from_pretrained``) works on it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crucible_core.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from crucible_core.ir.backend import Prompt

__all__ = [
    "BYTE_TOKENIZER_NAME",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "LocalTokenizer",
    "build_byte_tokenizer",
    "bytes_to_unicode",
]

BYTE_TOKENIZER_NAME = "crucible-byte"

#: Special tokens of the byte-level tokenizer, with ids 256, 257, ... in this order.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",
    "<|eos|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
)

#: ``<|bos|><|user|>hi<|eos|><|assistant|>hello<|eos|>``: one role token per
#: message, each message closed by EOS (so a sampler stops at the end of a turn).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> the printable character standing for it in ByteLevel token strings."""
    # The GPT-2 byte <-> printable-character table that ByteLevel pre-tokenisation uses.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def build_byte_tokenizer() -> PreTrainedTokenizerBase:
    """The built-in byte-level tokenizer (a fresh ``PreTrainedTokenizerFast``)."""
    from crucible_local._hf import offline

    offline()
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RawTokenizer
    from transformers import PreTrainedTokenizerFast

    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    raw = RawTokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        model_max_length=1 << 30,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.name_or_path = BYTE_TOKENIZER_NAME
    return tok


class LocalTokenizer:
    """A transformers tokenizer behind the ``Tokenizer`` contract of crucible_core.

    ``hf`` is the wrapped ``PreTrainedTokenizerBase`` for tooling that wants it.
    """

    def __init__(self, hf: PreTrainedTokenizerBase, *, name: str) -> None:
        self._hf = hf
        self._name = name
        self._vocab_size = len(hf)

    @property
    def hf(self) -> PreTrainedTokenizerBase:
        return self._hf

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_token_id(self) -> int | None:
        value: Any = self._hf.eos_token_id
        return value if isinstance(value, int) else None

    @property
    def bos_token_id(self) -> int | None:
        value: Any = self._hf.bos_token_id
        return value if isinstance(value, int) else None

    @property
    def chat_template(self) -> str | None:
        value: Any = self._hf.chat_template
        return value if isinstance(value, str) else None

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        ids: Any = self._hf.encode(text, add_special_tokens=add_special_tokens)
        return [int(i) for i in ids]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        text: Any = self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return str(text)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """Render chat messages with the tokenizer's template and encode them."""
        if self.chat_template is None:
            raise ConfigError(
                f"prompt.messages: tokenizer {self._name!r} has no chat template",
                hint="send a text or tokens prompt, or use a tokenizer whose "
                "tokenizer_config.json (or chat_template.jinja) defines one",
            )
        rendered: Any = self._hf.apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=add_generation_prompt, tokenize=False
        )
        return self.encode(str(rendered), add_special_tokens=False)

    def prompt_tokens(self, prompt: Prompt) -> list[int]:
        """A prompt's token ids: chat messages through the template, text with special tokens."""
        if prompt.tokens is not None:
            return list(prompt.tokens)
        if prompt.messages is not None:
            messages = [
                {"role": m.role, "content": m.content}
                | ({"name": m.name} if m.name is not None else {})
                for m in prompt.messages
            ]
            return self.apply_chat_template(messages)
        return self.encode(prompt.text or "", add_special_tokens=True)

    def __repr__(self) -> str:
        return f"LocalTokenizer(name={self._name!r}, vocab_size={self._vocab_size})"

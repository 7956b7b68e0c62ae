"""Tokenizers for the ``tinker`` backend, without a hub.

The SDK's ``get_tokenizer()`` downloads a tokenizer from a model hub, which a
machine without that access cannot do. The ``tinker`` backend therefore finds
a tokenizer, in order:

1. ``tokenizer_dir``: a local Hugging Face tokenizer directory (backend option);
2. ``ModelSpec.tokenizer`` or ``ModelSpec.path`` when it is a local directory;
3. ``tokenizer_backend``: the tokenizer of another registered crucible backend
   for the same ModelSpec (``crucible_core.get_backend(name).get_tokenizer(spec)``),
   e.g. ``"local"`` when the Tinker-compatible server is backed by crucible-local;
4. when the server is a crucible-tinker server (``crucible serve-tinker``), the
   backend it names at ``/crucible/v1/info``, if that backend is registered in
   this process too;

and otherwise refuses with a ConfigError that lists these options.
``$CRUCIBLE_TINKER_TOKENIZER_DIR`` and ``$CRUCIBLE_TINKER_TOKENIZER_BACKEND``
give the first and third when the options are not set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crucible_core.contracts import Tokenizer
from crucible_core.errors import ConfigError
from crucible_core.ir.backend import Message

__all__ = ["HFTokenizer", "render_messages"]


class HFTokenizer:
    """A Hugging Face tokenizer loaded from a local directory, as a crucible Tokenizer."""

    def __init__(self, directory: str | Path) -> None:
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise ConfigError(f"tokenizer directory {path} does not exist")
        from transformers import AutoTokenizer

        try:
            self._tok: Any = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"no usable tokenizer in {path}: {exc}",
                hint="point tokenizer_dir at a directory with tokenizer.json and "
                "tokenizer_config.json",
            ) from None
        self._name = str(path)

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def eos_token_id(self) -> int | None:
        value = self._tok.eos_token_id
        return int(value) if isinstance(value, int) else None

    @property
    def chat_template(self) -> str | None:
        value = getattr(self._tok, "chat_template", None)
        return value if isinstance(value, str) else None

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return [int(i) for i in self._tok.encode(text, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def render_chat(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of ``messages`` through the tokenizer's chat template, ready to generate."""
        rendered: Any = self._tok.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            tokenize=True,
        )
        if isinstance(rendered, dict):  # newer transformers return a BatchEncoding
            rendered = rendered["input_ids"]
        return [int(i) for i in rendered]


def render_messages(tokenizer: Tokenizer, messages: Sequence[Message]) -> list[int]:
    """Prompt tokens for chat ``messages``: the tokenizer's chat template when it has one,
    else plain ``role: content`` lines ending with ``assistant:``."""
    render = getattr(tokenizer, "render_chat", None)
    if callable(render) and tokenizer.chat_template:
        out: Any = render(messages)
        return [int(i) for i in out]
    text = "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"
    return tokenizer.encode(text)

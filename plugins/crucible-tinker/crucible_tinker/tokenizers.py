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

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from crucible_core.contracts import Tokenizer
from crucible_core.errors import ConfigError
from crucible_core.ir.backend import Message
from crucible_core.ir.training import ModelSpec

__all__ = ["HFTokenizer", "find_tokenizer", "render_messages"]


def find_tokenizer(
    model: ModelSpec,
    *,
    tokenizer_dir: str | None,
    tokenizer_backend: str | None,
    tokenizer_backend_options: Mapping[str, Any],
    served_backend_name: Callable[[], str | None],
) -> Tokenizer:
    """The tokenizer of ``model``, found in the order of the module docstring.

    ``served_backend_name`` asks the server which crucible backend serves it
    (None when it is not a crucible-tinker server); it is called only when
    nothing local applies.
    """
    if tokenizer_dir:
        return HFTokenizer(tokenizer_dir)
    for candidate in (model.tokenizer, model.path):
        if candidate and Path(candidate).expanduser().is_dir():
            return HFTokenizer(candidate)
    import crucible_core

    if tokenizer_backend:
        other = crucible_core.get_backend(tokenizer_backend, **tokenizer_backend_options)
        return other.get_tokenizer(model)
    served = served_backend_name()
    if served is not None and served != "tinker":
        known = {r.name for r in crucible_core.list_registrations("backend")}
        if served in known:
            return crucible_core.get_backend(served).get_tokenizer(model)
    raise ConfigError(
        f"the tinker backend has no tokenizer for {model.name!r} "
        "(the SDK's own tokenizer download needs a model hub)",
        hint="set the backend option tokenizer_dir to a local tokenizer directory, set "
        "model_spec.tokenizer to one, or tokenizer_backend to a registered backend with the "
        'same model (e.g. "local" when the server is `crucible serve-tinker --backend local`)',
    )


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

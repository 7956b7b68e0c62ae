"""Rules the inference and training checks share: capabilities, tokenizers, completions.

Also the sampling rules both contracts state: a setting a backend cannot
honour is refused with a :class:`~crucible_core.errors.ConfigError`
(:class:`~crucible_core.errors.UnsupportedError` is one), never ignored; and
``finish_reason = "length"`` means the ``max_tokens`` limit cut the text.
"""

from __future__ import annotations

from typing import Any

from crucible_core.contracts import Tokenizer
from crucible_core.errors import ConfigError
from crucible_core.ir.backend import Capabilities, Completion, SamplingParams
from crucible_core.testing._guard import ConformanceError, require

__all__ = [
    "check_capabilities",
    "check_completion",
    "check_completions",
    "check_tokenizer",
    "refused",
    "stop_probe",
]


def check_tokenizer(tok: Any) -> Tokenizer:
    require(
        isinstance(tok, Tokenizer),
        "get_tokenizer must return a Tokenizer (name, vocab_size, eos_token_id, chat_template, "
        f"encode, decode); got {type(tok).__name__}",
    )
    ids: list[Any] = list(tok.encode("hello world"))
    require(all(isinstance(i, int) for i in ids), "Tokenizer.encode must return a list of int")
    require(
        all(0 <= i < tok.vocab_size for i in ids),
        "Tokenizer.encode returned ids outside [0, vocab_size)",
    )
    require("hello" in tok.decode(ids), "Tokenizer.decode(encode('hello world')) lost the text")
    return tok


def check_capabilities(caps: Any, *, training: bool) -> Capabilities:
    require(
        isinstance(caps, Capabilities),
        f"capabilities() must return crucible_core.ir.Capabilities, got {type(caps).__name__}",
    )
    require(bool(caps.backend_id), "Capabilities.backend_id must not be empty")
    if training:
        require(caps.supports_training, "a TrainingBackend must declare supports_training=True")
        require(
            "cross_entropy" in caps.losses,
            f"a TrainingBackend must support the cross_entropy loss; declares {caps.losses}",
        )
        require(bool(caps.adapters), "Capabilities.adapters must list what the backend trains")
    return caps


def check_completion(c: Any, params: SamplingParams, caps: Capabilities, call: str) -> Completion:
    require(isinstance(c, Completion), f"{call} must give a Completion, got {type(c).__name__}")
    require(
        len(c.tokens) <= params.max_tokens,
        f"{call} produced {len(c.tokens)} tokens; max_tokens was {params.max_tokens}",
    )
    require(
        c.finish_reason in ("stop", "length"),
        f"{call}: finish_reason must be 'stop' or 'length' on success, got {c.finish_reason!r}",
    )
    require(
        c.finish_reason != "length" or len(c.tokens) == params.max_tokens,
        f"{call}: finish_reason 'length' means max_tokens ({params.max_tokens}) cut the text, "
        f"but only {len(c.tokens)} tokens were generated",
    )
    if caps.supports_logprobs:
        require(
            c.logprobs is not None and len(c.logprobs) == len(c.tokens),
            f"{call}: a backend that supports logprobs must return one per generated token",
        )
    return c


def check_completions(
    completions: Any, params: SamplingParams, caps: Capabilities, call: str
) -> list[Completion]:
    require(isinstance(completions, list), f"{call} must resolve to a list of Completion")
    items: list[Any] = list(completions)
    require(
        len(items) == params.n, f"{call} must return n={params.n} completions, got {len(items)}"
    )
    return [check_completion(c, params, caps, call) for c in items]


def refused(exc: BaseException | None, call: str, setting: str) -> bool:
    """Whether ``exc`` is an allowed refusal of ``setting``; any other exception breaks a rule."""
    if exc is None:
        return False
    if isinstance(exc, ConfigError):
        return True
    raise ConformanceError(
        f"{call} raised {type(exc).__name__}: {exc} (checking: a setting the backend cannot "
        f"honour ({setting}) is refused with crucible_core.errors.UnsupportedError)"
    ) from exc


def stop_probe(text: str) -> str | None:
    """A stop string occurring in ``text`` after its first character: visible, 2 or 1 chars."""
    for width in (2, 1):
        for i in range(1, len(text) - width + 1):
            probe = text[i : i + width]
            if not any(ch.isspace() or ch == "\ufffd" for ch in probe):
                return probe
    return None

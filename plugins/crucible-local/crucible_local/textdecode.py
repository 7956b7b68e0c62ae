"""Token ids to text one token at a time, cut only at character boundaries.

A byte-level tokenizer (the built-in one, GPT-2 and Llama-3 style BPE) can end
a token in the middle of a multi-byte UTF-8 character; decoding such a prefix
as a whole gives U+FFFD for the missing half. A :class:`TextDecoder` keeps the
bytes of an unfinished character until the token that completes it arrives,
so its ``text`` only ever holds whole characters: a sample cut by
``max_tokens`` loses its unfinished last character instead of showing U+FFFD,
and stream chunks never carry half a character.

Bytes that can never form a character (a model may emit ``0xff``) still
decode to U+FFFD, where they are: that is what the bytes are, not a cut.

Tokenizers that are not byte-level are decoded as a whole and a trailing
U+FFFD (their sign of an unfinished character) is held back.
"""

from __future__ import annotations

import codecs
import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crucible_local.tokenizer import LocalTokenizer

__all__ = ["TextDecoder"]

_REPLACEMENT = "\ufffd"


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    from crucible_local.tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def _is_byte_level(tokenizer: LocalTokenizer) -> bool:
    backend: Any = getattr(tokenizer.hf, "backend_tokenizer", None)
    decoder: Any = getattr(backend, "decoder", None)
    return type(decoder).__name__ == "ByteLevel"


class TextDecoder:
    """The text of a growing list of token ids; ``text`` holds whole characters only.

    ``skip_special_tokens`` leaves special tokens (BOS, EOS, role markers) out
    of the text, as ``tokenizer.decode(..., skip_special_tokens=True)`` does.
    """

    def __init__(self, tokenizer: LocalTokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._text = ""
        self._bytes = _is_byte_level(tokenizer)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        hf: Any = tokenizer.hf
        self._added: dict[int, Any] = dict(getattr(hf, "added_tokens_decoder", {}) or {})

    @property
    def text(self) -> str:
        """Every whole character decoded so far."""
        return self._text

    def push(self, token: int) -> str:
        """Add one token; return the text it completed (may be empty)."""
        if not self._bytes:
            self._ids.append(token)
            full = self._tokenizer.decode(self._ids, skip_special_tokens=self._skip)
            full = full.rstrip(_REPLACEMENT)
            if not full.startswith(self._text):
                # Decoding the longer list changed earlier text (rare): keep what was given.
                return ""
            added, self._text = full[len(self._text) :], full
            return added
        added_token = self._added.get(token)
        if added_token is not None:
            if self._skip and bool(getattr(added_token, "special", False)):
                return ""
            piece = str(getattr(added_token, "content", ""))
            # Bytes before an added token can no longer complete a character.
            piece = self._utf8.decode(b"", final=True) + piece
            self._utf8.reset()
        else:
            raw: Any = self._tokenizer.hf.convert_ids_to_tokens(token)
            table = _unicode_to_byte()
            data = bytes(table[c] for c in str(raw) if c in table)
            piece = self._utf8.decode(data)
        self._text += piece
        return piece

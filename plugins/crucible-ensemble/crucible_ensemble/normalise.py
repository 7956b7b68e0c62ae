"""Answer normalisation: what makes two members' texts "the same answer".

Voting compares keys, not raw texts: ``"The answer is 42."`` and ``"42"`` should
count as one vote when the task is arithmetic, and ``"(B)"`` and ``"b) Paris"``
when it is multiple choice. :class:`Normaliser` is plain data (it travels in a
``BackendRef``'s options) and :meth:`Normaliser.key` is a pure function of it.
"""

from __future__ import annotations

import re
import string
import unicodedata
from decimal import Decimal
from typing import Annotated

import msgspec
from msgspec import Meta

from crucible_core.errors import ConfigError

__all__ = ["GSM8K_FINAL_ANSWER", "Normaliser"]

#: GSM8K's convention: the final answer follows ``####``.
GSM8K_FINAL_ANSWER = r"####\s*(-?[\d,]*\.?\d+)"

# Punctuation, except a decimal point between digits ("3.5" must not become "35") and
# a number's sign at the start of a word ("-7" must not become "7").
_STRIP = re.compile(
    r"(?!(?<=\d)\.(?=\d))(?!(?<!\S)-(?=\.?\d))[" + re.escape(string.punctuation) + "]"
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_CHOICE = re.compile(
    r"""(?:^|answer\s*(?:is|:)?\s*|^\W*)   # at the start, or after "answer is"
        [(\[]?([A-Ja-j])[)\].:]?           # a letter, optionally bracketed
        (?=\s|$|[).:,])""",
    re.VERBOSE | re.IGNORECASE,
)


class Normaliser(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How an answer text becomes a voting key.

    Applied in this order: ``extract`` (a regex; its first group, or the whole
    match, is the answer; no match leaves the text as is), ``choice_letters``
    (reduce to a multiple-choice letter when one leads the text or follows
    "answer is"), ``numbers`` (``"1,000.50"`` -> ``"1000.5"``), ``case``,
    ``punctuation`` and ``whitespace``.
    """

    extract: Annotated[str, Meta(min_length=1)] | None = None
    choice_letters: bool = False
    numbers: bool = True
    case: bool = True
    punctuation: bool = True
    whitespace: bool = True

    def __post_init__(self) -> None:
        if self.extract is not None:
            try:
                re.compile(self.extract)
            except re.error as exc:
                raise ConfigError(
                    f"normalise.extract: invalid regular expression ({exc})",
                    hint=f"e.g. {GSM8K_FINAL_ANSWER!r} for GSM8K's final answer",
                ) from None

    def key(self, text: str) -> str:
        """The voting key of ``text`` (never raises)."""
        out = unicodedata.normalize("NFKC", text).strip()
        if self.extract is not None:
            match = re.search(self.extract, out, re.DOTALL)
            if match is not None:
                out = (match.group(1) if match.groups() else match.group(0)).strip()
        if self.choice_letters:
            match = _CHOICE.search(out)
            if match is not None:
                return match.group(1).lower()
        if self.numbers:
            out = _NUMBER.sub(_canonical_number, out)
        if self.case:
            out = out.casefold()
        if self.punctuation:
            out = _STRIP.sub("", out)
            if self.numbers:  # removing "0:0"'s colon makes a new number, "00"
                out = _NUMBER.sub(_canonical_number, out)
        if self.whitespace:
            out = " ".join(out.split())
        return out


def _canonical_number(match: re.Match[str]) -> str:
    """``"1,000.50"`` -> ``"1000.5"``: exact decimal digits, no exponent, no trailing zeros.

    Decimal rather than float: a float's repr can carry an exponent (``1e-07``)
    whose sign punctuation stripping would then remove, so the key would change
    when normalised again. Formatted with ``"f"`` and trimmed as text, because
    ``quantize``/``normalize`` round to the context's 28 digits (and ``quantize``
    raises beyond them), while ``format`` is exact at any length.
    """
    text = format(Decimal(match.group(0).replace(",", "")), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text

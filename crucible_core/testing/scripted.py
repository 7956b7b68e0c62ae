"""``scripted_completion``: what a test double of a backend returns, by the contract's rules.

Plugins that wrap backends (ensembles, hedging, routers) test their logic against
members whose answers the test chooses. Those members must still keep the
inference contract, or the wrapper's own conformance check fails for the
member's fault; this builds their completions the way the kit expects.
"""

from __future__ import annotations

from crucible_core.errors import UnsupportedError
from crucible_core.ir.backend import Completion, SamplingParams, Usage

__all__ = ["scripted_completion"]


def scripted_completion(
    answer: str, params: SamplingParams, backend_id: str, *, prompt_tokens: int = 3
) -> Completion:
    """A greedy completion of ``answer``, one token per space-separated word.

    Honours ``max_tokens`` (the first words, ``finish_reason = "length"`` when cut),
    stop strings (the text ends just before the first, ``finish_reason = "stop"``)
    and refuses ``n > 1`` with ``UnsupportedError``. Token ids are stable per word.
    """
    if params.n != 1:
        raise UnsupportedError("n > 1: complete returns one completion", hint="use n = 1")
    words = answer.split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)][: params.max_tokens]
    text = "".join(pieces)
    tokens = [sum(map(ord, p)) % 1000 + 1 for p in pieces]
    finish: str = "length" if len(words) > params.max_tokens else "stop"
    cuts = [i for i in (text.find(s) for s in params.stop if s) if i >= 0]
    if cuts:
        end, used = min(cuts), 0
        while used < len(pieces) and len("".join(pieces[:used])) <= end:
            used += 1
        text, tokens, finish = text[:end], tokens[:used], "stop"
    return Completion(
        text=text,
        tokens=tokens,
        finish_reason="length" if finish == "length" else "stop",
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=len(tokens)),
        backend_id=backend_id,
    )

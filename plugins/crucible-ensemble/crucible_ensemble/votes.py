"""Votes and decisions: the plain data every strategy reads and returns.

A member's answer to one prompt is a :class:`Vote`: its weight and its
:class:`Candidate` answers (one per sample when ``n > 1``), best first. Strategies
are pure functions of a list of votes, so the result never depends on the order
in which members answered (ties are broken by the answer key, not by arrival).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from crucible_core.ir import Completion
from crucible_ensemble.normalise import Normaliser

__all__ = [
    "Candidate",
    "Decision",
    "Vote",
    "confidence_of",
    "decision",
    "make_vote",
    "representative",
]


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """One distinct answer of a member: its voting ``key``, a raw ``text`` and how sure it was.

    ``count`` is how many of the member's samples gave this key; ``confidence`` is
    ``exp(mean token logprob)`` of the best such sample, ``None`` without logprobs.
    """

    key: str
    text: str
    count: int = 1
    confidence: float | None = None
    source: Completion | None = None


class Vote(msgspec.Struct, frozen=True, kw_only=True):
    """One member's ballot: candidates in the member's own order of preference."""

    member: str
    weight: float = 1.0
    candidates: list[Candidate]

    @property
    def top(self) -> Candidate:
        return self.candidates[0]


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What a strategy chose: the winning ``key``, a representative ``text``, and support.

    ``agreement`` is the share of the voting weight whose top answer is the winner
    (for semantic similarity: whose answer is in the winning cluster).
    """

    key: str
    text: str
    agreement: float
    strategy: str
    source: Completion | None = None


def decision(votes: Sequence[Vote], key: str, agreement: float, strategy: str) -> Decision:
    """A decision for ``key`` whose text and completion come from :func:`representative`."""
    rep = representative(votes, key)
    return Decision(
        key=key,
        text=rep.text if rep is not None else key,
        agreement=agreement,
        strategy=strategy,
        source=rep.source if rep is not None else None,
    )


def confidence_of(completion: Completion) -> float | None:
    """``exp(mean logprob)`` of a completion's tokens, in (0, 1]; ``None`` without logprobs."""
    lps = completion.logprobs
    if not lps:
        return None
    mean = math.fsum(lps) / len(lps)
    return math.exp(min(0.0, mean)) if math.isfinite(mean) else 0.0


def make_vote(
    member: str, weight: float, completions: Sequence[Completion], normaliser: Normaliser
) -> Vote:
    """Group a member's samples by key; most frequent first, then most confident, then key."""
    groups: dict[str, list[Completion]] = {}
    for c in completions:
        groups.setdefault(normaliser.key(c.text), []).append(c)
    candidates: list[Candidate] = []
    for key, items in groups.items():
        scored = [(confidence_of(c), c) for c in items]
        best_conf, best = max(scored, key=lambda s: -1.0 if s[0] is None else s[0])
        candidates.append(
            Candidate(
                key=key,
                text=best.text,
                count=len(items),
                confidence=best_conf,
                source=best,
            )
        )
    candidates.sort(key=lambda c: (-c.count, -(c.confidence or 0.0), c.key))
    return Vote(member=member, weight=weight, candidates=candidates)


def representative(votes: Sequence[Vote], key: str) -> Candidate | None:
    """The text shown for ``key``: the heaviest, then most confident, then first-named voter's."""
    best: tuple[tuple[float, float, str, str], Candidate] | None = None
    for v in votes:
        for c in v.candidates:
            if c.key == key:
                rank = (-v.weight, -(c.confidence or 0.0), v.member, c.text)
                if best is None or rank < best[0]:
                    best = (rank, c)
    return best[1] if best is not None else None

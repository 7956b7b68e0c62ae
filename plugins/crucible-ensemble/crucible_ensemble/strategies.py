"""Voting strategies: pure functions from votes to a :class:`~crucible_ensemble.votes.Decision`.

Each strategy also answers :meth:`Strategy.settled`: given the votes in so far
and the weights of the members still pending, can any pending answers still
change the outcome? The executor stops waiting (and cancels the rest) only when
the answer is ``True``, so early stop never changes the answer (property-tested).
A strategy that cannot bound the pending votes' effect says ``False`` until every
member is in.

Votes of weight 0 are ignored everywhere, so a zero weight equals removing the
member. Ties are broken by the smaller answer key, never by arrival order.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Protocol, cast, runtime_checkable

from msgspec.structs import replace

from crucible_core.errors import ConfigError
from crucible_ensemble.similarity import Similarity, token_overlap
from crucible_ensemble.votes import Decision, Vote, decision

__all__ = [
    "STRATEGIES",
    "BestConfidence",
    "Majority",
    "RankedChoice",
    "SemanticSimilarity",
    "Strategy",
    "Unanimous",
    "Weighted",
    "build_strategy",
]


@runtime_checkable
class Strategy(Protocol):
    """Combines members' votes into one decision."""

    name: str

    def decide(self, votes: Sequence[Vote]) -> Decision | None:
        """The winner among ``votes``; ``None`` when no vote has a positive weight."""
        ...

    def settled(self, votes: Sequence[Vote], pending: Sequence[float], samples: int) -> bool:
        """Whether members still pending (their weights) can no longer change the winner.

        ``samples`` is the number of candidates each member may still contribute.
        """
        ...


def _live(votes: Sequence[Vote]) -> list[Vote]:
    return [v for v in votes if v.weight > 0 and v.candidates]


def _leader(scores: Mapping[str, float]) -> tuple[str, float, float]:
    """(winning key, its score, the runner-up's score); ties go to the smaller key."""
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
    return ranked[0][0], ranked[0][1], runner_up


def _agreement(votes: Sequence[Vote], keys: set[str]) -> float:
    total = sum(v.weight for v in votes)
    return sum(v.weight for v in votes if v.top.key in keys) / total if total else 0.0


def _plurality_settled(
    scores: Mapping[str, float], votes: Sequence[Vote], pending_max: float
) -> bool:
    """A plurality is settled when the leader's margin exceeds what pending votes can add.

    A pending vote can add at most ``pending_max`` in total, to the runner-up or to
    an answer not yet seen (whose score is 0 <= the runner-up's), so a strict margin
    means no order of arrival can overtake or tie the leader.
    """
    if pending_max <= 0:
        return True
    if not scores:
        return False
    _, top, second = _leader(scores)
    return top - second > pending_max


class Weighted:
    """Each member's top answer scores its weight; the highest total wins."""

    name = "weighted"

    def _scores(self, votes: Sequence[Vote]) -> dict[str, float]:
        scores: dict[str, float] = {}
        for v in votes:
            scores[v.top.key] = scores.get(v.top.key, 0.0) + self._weight(v)
        return scores

    def _weight(self, vote: Vote) -> float:
        return vote.weight

    def decide(self, votes: Sequence[Vote]) -> Decision | None:
        live = _live(votes)
        if not live:
            return None
        key, _, _ = _leader(self._scores(live))
        return decision(live, key, _agreement(live, {key}), self.name)

    def settled(self, votes: Sequence[Vote], pending: Sequence[float], samples: int) -> bool:
        live = _live(votes)
        pending_max = sum(self._weight_of(w) for w in pending if w > 0)
        return _plurality_settled(self._scores(live), live, pending_max)

    def _weight_of(self, weight: float) -> float:
        return weight


class Majority(Weighted):
    """One member, one vote (weights only switch members off when 0)."""

    name = "majority"

    def _weight(self, vote: Vote) -> float:
        return 1.0

    def _weight_of(self, weight: float) -> float:
        return 1.0

    def decide(self, votes: Sequence[Vote]) -> Decision | None:
        decided = super().decide(votes)
        if decided is None:
            return None
        live = _live(votes)
        share = sum(1 for v in live if v.top.key == decided.key) / len(live)
        return replace(decided, agreement=share, strategy=self.name)


class BestConfidence:
    """The single most confident top answer (by mean token logprob) wins.

    Members without logprobs rank below any with them; ties go to the heavier
    member, then the smaller key. Cannot stop early: a pending member may always
    be more confident.
    """

    name = "best_confidence"

    def decide(self, votes: Sequence[Vote]) -> Decision | None:
        live = _live(votes)
        if not live:
            return None
        best = min(
            live,
            key=lambda v: (
                v.top.confidence is None,
                -(v.top.confidence or 0.0),
                -v.weight,
                v.top.key,
            ),
        )
        top = best.top
        return Decision(
            key=top.key,
            text=top.text,
            agreement=_agreement(live, {top.key}),
            strategy=self.name,
            source=top.source,
        )

    def settled(self, votes: Sequence[Vote], pending: Sequence[float], samples: int) -> bool:
        return not any(w > 0 for w in pending)


class Unanimous:
    """The common answer when every member agrees; otherwise the ``fallback`` strategy decides."""

    name = "unanimous"

    def __init__(self, fallback: str | Strategy = "majority") -> None:
        self.fallback: Strategy = (
            build_strategy(fallback) if isinstance(fallback, str) else fallback
        )
        if isinstance(self.fallback, Unanimous):
            raise ConfigError("unanimous.fallback: cannot be 'unanimous' itself")

    def decide(self, votes: Sequence[Vote]) -> Decision | None:
        live = _live(votes)
        if not live:
            return None
        keys = {v.top.key for v in live}
        if len(keys) == 1:
            return decision(live, keys.pop(), 1.0, self.name)
        decided = self.fallback.decide(live)
        assert decided is not None  # live is not empty
        return replace(decided, strategy=f"{self.name}->{decided.strategy}")

    def settled(self, votes: Sequence[Vote], pending: Sequence[float], samples: int) -> bool:
        live = _live(votes)
        if len({v.top.key for v in live}) > 1:
            return self.fallback.settled(live, pending, samples)
        return not any(w > 0 for w in pending)


class RankedChoice:
    """Borda count over each member's samples: with ``n`` samples, a member's i-th
    distinct answer (most frequent first) scores ``weight * (n - i)``."""

    name = "ranked_choice"

    def _scores(self, votes: Sequence[Vote]) -> dict[str, float]:
        samples = max((sum(c.count for c in v.candidates) for v in votes), default=1)
        scores: dict[str, float] = {}
        for v in votes:
            for i, c in enumerate(v.candidates):
                scores[c.key] = scores.get(c.key, 0.0) + v.weight * max(samples - i, 0)
        return scores

    def decide(self, votes: Sequence[Vote]) -> Decision | None:
        live = _live(votes)
        if not live:
            return None
        key, _, _ = _leader(self._scores(live))
        return decision(live, key, _agreement(live, {key}), self.name)

    def settled(self, votes: Sequence[Vote], pending: Sequence[float], samples: int) -> bool:
        live = _live(votes)
        seen = max((sum(c.count for c in v.candidates) for v in live), default=0)
        if seen != samples:
            # Scores are scaled by the sample count seen so far; wait for a full picture.
            return not any(w > 0 for w in pending)
        pending_max = sum(w for w in pending if w > 0) * samples
        return _plurality_settled(self._scores(live), live, pending_max)


class SemanticSimilarity:
    """Clusters top answers whose keys are similar (>= ``threshold``); the heaviest cluster wins.

    Clusters are connected components of the "similar" relation over distinct keys,
    so they do not depend on arrival order. The winning cluster is represented by
    its heaviest key. ``similarity`` is a callable or a ``"module:function"`` string;
    the default is word overlap of the normalised keys. Waits for every member: a
    pending answer may join two clusters.
    """

    name = "semantic_similarity"

    def __init__(self, threshold: float = 0.8, similarity: str | Similarity | None = None) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(
                f"semantic_similarity.threshold: must be in (0, 1], got {threshold!r}"
            )
        self.threshold = threshold
        self.similarity: Similarity = (
            _import(similarity) if isinstance(similarity, str) else (similarity or token_overlap)
        )

    def clusters(self, keys: Sequence[str]) -> list[set[str]]:
        """Connected components of the similarity graph over ``keys``."""
        distinct = sorted(set(keys))
        parent = {k: k for k in distinct}

        def find(k: str) -> str:
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        for i, a in enumerate(distinct):
            for b in distinct[i + 1 :]:
                if self.similarity(a, b) >= self.threshold:
                    parent[find(b)] = find(a)
        groups: dict[str, set[str]] = {}
        for k in distinct:
            groups.setdefault(find(k), set()).add(k)
        return list(groups.values())

    def decide(self, votes: Sequence[Vote]) -> Decision | None:
        live = _live(votes)
        if not live:
            return None
        weight_of: dict[str, float] = {}
        for v in live:
            weight_of[v.top.key] = weight_of.get(v.top.key, 0.0) + v.weight
        clusters = self.clusters(list(weight_of))
        best = min(clusters, key=lambda c: (-sum(weight_of[k] for k in c), min(c)))
        key, _, _ = _leader({k: weight_of[k] for k in best})
        return decision(live, key, _agreement(live, best), self.name)

    def settled(self, votes: Sequence[Vote], pending: Sequence[float], samples: int) -> bool:
        return not any(w > 0 for w in pending)


def _import(ref: str) -> Similarity:
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ConfigError(
            f"semantic_similarity.similarity: {ref!r} is not 'module:function'",
            hint="e.g. 'crucible_ensemble.similarity:token_overlap'",
        )
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"semantic_similarity.similarity: cannot import {ref!r} ({exc})"
        ) from None
    if not callable(fn):
        raise ConfigError(f"semantic_similarity.similarity: {ref!r} is not callable")
    return cast(Similarity, fn)


STRATEGIES: dict[str, type] = {
    "majority": Majority,
    "weighted": Weighted,
    "best_confidence": BestConfidence,
    "unanimous": Unanimous,
    "ranked_choice": RankedChoice,
    "semantic_similarity": SemanticSimilarity,
}


def build_strategy(name: str, **options: object) -> Strategy:
    """A strategy by its registered name, through the plugin host, so a third party's
    strategy is addressable exactly like the built-ins.

    Unknown names raise ``NotFound`` listing the registered names with a
    did-you-mean; options the strategy does not take raise ``ConfigError``.
    """
    from crucible_core import get_ensemble_strategy

    strategy = get_ensemble_strategy(name, **options)  # unknown options: ConfigError from the host
    if not isinstance(strategy, Strategy):
        raise ConfigError(f"ensemble strategy {name!r} does not provide decide() and settled()")
    return strategy

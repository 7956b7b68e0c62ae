"""Voting strategies: worked examples and the properties every strategy must keep."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from crucible_ensemble import (
    BestConfidence,
    Candidate,
    Majority,
    RankedChoice,
    SemanticSimilarity,
    Strategy,
    Unanimous,
    Vote,
    Weighted,
    build_strategy,
)
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.errors import ConfigError, NotFound

ALL: list[Strategy] = [
    Majority(),
    Weighted(),
    BestConfidence(),
    Unanimous(),
    Unanimous(fallback=Weighted()),
    RankedChoice(),
    SemanticSimilarity(threshold=0.5),
]
IDS = [s.name if not isinstance(s, Unanimous) else f"unanimous-{s.fallback.name}" for s in ALL]
KEYS = ["a", "b", "c", "d e", "d f"]


def vote(member: str, *keys: str, weight: float = 1.0, conf: float | None = None) -> Vote:
    return Vote(
        member=member,
        weight=weight,
        candidates=[Candidate(key=k, text=k.upper(), confidence=conf) for k in keys],
    )


@st.composite
def ballots(draw: st.DrawFn, samples: int = 1, min_size: int = 1) -> list[Vote]:
    n = draw(st.integers(min_size, 7))
    out: list[Vote] = []
    for i in range(n):
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=samples, unique=True))
        counts = [samples - len(keys) + 1] + [1] * (len(keys) - 1)
        out.append(
            Vote(
                member=f"m{i}",
                weight=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0])),
                candidates=[
                    Candidate(
                        key=k, text=k, count=c, confidence=draw(st.sampled_from([None, 0.2, 0.9]))
                    )
                    for k, c in zip(keys, counts, strict=True)
                ],
            )
        )
    if all(v.weight == 0 for v in out):
        out[0] = Vote(member=out[0].member, weight=1.0, candidates=out[0].candidates)
    return out


def key_of(strategy: Strategy, votes: Sequence[Vote]) -> str | None:
    d = strategy.decide(votes)
    return None if d is None else d.key


# -- examples ---------------------------------------------------------------------


def test_majority_counts_members_and_weighted_counts_weights() -> None:
    votes = [vote("x", "a", weight=5), vote("y", "b"), vote("z", "b")]
    m = Majority().decide(votes)
    assert m is not None
    assert (m.key, m.text, m.agreement) == ("b", "B", pytest.approx(2 / 3))
    w = Weighted().decide(votes)
    assert w is not None
    assert (w.key, w.agreement) == ("a", pytest.approx(5 / 7))


def test_best_confidence_prefers_logprobs_over_none() -> None:
    votes = [vote("x", "a"), vote("y", "b", conf=0.3), vote("z", "c", conf=0.8)]
    assert key_of(BestConfidence(), votes) == "c"
    assert key_of(BestConfidence(), [vote("x", "a"), vote("y", "b", conf=0.01)]) == "b"


def test_unanimous_falls_back_when_members_disagree() -> None:
    agree = Unanimous().decide([vote("x", "a"), vote("y", "a")])
    assert agree is not None
    assert (agree.key, agree.strategy, agree.agreement) == ("a", "unanimous", 1.0)
    split = Unanimous(fallback="weighted").decide([vote("x", "a", weight=3), vote("y", "b")])
    assert split is not None
    assert (split.key, split.strategy) == ("a", "unanimous->weighted")
    with pytest.raises(ConfigError, match="cannot be 'unanimous' itself"):
        Unanimous(fallback=Unanimous())


def test_ranked_choice_is_a_borda_count_over_samples() -> None:
    def ranked(member: str, *keys: str) -> Vote:
        counts = [3 - len(keys) + 1] + [1] * (len(keys) - 1)
        return Vote(
            member=member,
            candidates=[
                Candidate(key=k, text=k, count=c) for k, c in zip(keys, counts, strict=True)
            ],
        )

    # a: 3 + 0 + 1 = 4... each member has 3 samples: points 3, 2, 1 by position.
    votes = [ranked("x", "a", "b", "c"), ranked("y", "b", "c", "a"), ranked("z", "b")]
    # a = 3 + 1 = 4; b = 2 + 3 + 3 = 8; c = 1 + 2 = 3
    assert key_of(RankedChoice(), votes) == "b"
    # The first choice alone would tie a and b; the second choices break it.
    votes = [ranked("x", "a", "c"), ranked("y", "b", "a")]
    assert key_of(RankedChoice(), votes) == "a"


def test_semantic_similarity_clusters_overlapping_answers() -> None:
    s = SemanticSimilarity(threshold=0.5)
    votes = [vote("x", "paris"), vote("y", "paris france"), vote("z", "lyon")]
    d = s.decide(votes)
    assert d is not None
    assert d.key in {"paris", "paris france"}
    assert d.agreement == pytest.approx(2 / 3)
    assert key_of(SemanticSimilarity(threshold=1.0), votes) == "lyon"  # no clusters: ties by key


def test_semantic_similarity_takes_a_similarity_by_reference() -> None:
    s = SemanticSimilarity(threshold=0.9, similarity="crucible_ensemble.similarity:token_overlap")
    assert s.similarity("a b", "a b") == 1.0
    with pytest.raises(ConfigError, match="not 'module:function'"):
        SemanticSimilarity(similarity="nope")
    with pytest.raises(ConfigError, match="cannot import"):
        SemanticSimilarity(similarity="crucible_ensemble.similarity:missing")
    with pytest.raises(ConfigError, match=r"threshold: must be in \(0, 1\]"):
        SemanticSimilarity(threshold=0)


def test_strategies_resolve_by_name_through_the_plugin_host() -> None:
    assert isinstance(build_strategy("majority"), Majority)
    assert isinstance(build_strategy("unanimous", fallback="ranked_choice").fallback, RankedChoice)
    with pytest.raises(NotFound, match="did you mean 'majority'"):
        build_strategy("majorty")
    with pytest.raises(ConfigError, match="bad options"):
        build_strategy("majority", bogus=1)


# -- properties ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ALL, ids=IDS)
@given(key=st.sampled_from(KEYS), n=st.integers(1, 6), data=st.data())
def test_unanimous_inputs_give_that_answer(
    strategy: Strategy, key: str, n: int, data: st.DataObject
) -> None:
    weights = data.draw(st.lists(st.sampled_from([0.5, 1.0, 4.0]), min_size=n, max_size=n))
    votes = [vote(f"m{i}", key, weight=w) for i, w in enumerate(weights)]
    assert key_of(strategy, votes) == key


@pytest.mark.parametrize("strategy", ALL, ids=IDS)
@given(votes=ballots(samples=3), data=st.data())
def test_the_outcome_does_not_depend_on_member_order(
    strategy: Strategy, votes: list[Vote], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(votes))
    assert key_of(strategy, shuffled) == key_of(strategy, votes)


@pytest.mark.parametrize("strategy", ALL, ids=IDS)
@given(votes=ballots(samples=3), data=st.data())
def test_early_stop_never_changes_the_answer(
    strategy: Strategy, votes: list[Vote], data: st.DataObject
) -> None:
    """Feed votes in a random arrival order; wherever `settled` says stop, the answer
    at that point is the answer with every vote in."""
    final = key_of(strategy, votes)
    arrival = data.draw(st.permutations(votes))
    for i in range(len(arrival) + 1):
        seen, pending = arrival[:i], arrival[i:]
        if strategy.settled(seen, [v.weight for v in pending], 3):
            assert key_of(strategy, seen) == final
            break


@pytest.mark.parametrize("strategy", ALL, ids=IDS)
@given(votes=ballots(samples=3), extra=st.sampled_from(KEYS), data=st.data())
def test_a_zero_weight_member_equals_removing_it(
    strategy: Strategy, votes: list[Vote], extra: str, data: st.DataObject
) -> None:
    silent = Vote(member="zero", weight=0.0, candidates=[Candidate(key=extra, text=extra)])
    at = data.draw(st.integers(0, len(votes)))
    with_zero = [*votes[:at], silent, *votes[at:]]
    assert strategy.decide(with_zero) == strategy.decide(votes)


def test_majority_settles_as_soon_as_the_margin_exceeds_the_pending_votes() -> None:
    votes = [vote("x", "a"), vote("y", "a"), vote("z", "a")]
    assert Majority().settled(votes, [1.0, 1.0], 1)  # 3 - 0 > 2
    assert not Majority().settled(votes[:2], [1.0, 1.0], 1)  # 2 - 0 == 2: could tie
    assert not BestConfidence().settled(votes, [1.0], 1)
    assert BestConfidence().settled(votes, [0.0], 1)

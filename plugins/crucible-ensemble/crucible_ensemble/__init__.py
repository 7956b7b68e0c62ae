"""crucible-ensemble: vote over several inference backends.

Library use needs no plugin host beyond strategy lookup::

    from crucible_ensemble import EnsembleBackend
    ens = EnsembleBackend(["local", "local"], "majority", samples=3)
    result = ens.run(Prompt(text="2+2="), SamplingParams(max_tokens=4))
"""

from __future__ import annotations

from crucible_ensemble.backend import EnsembleBackend
from crucible_ensemble.execution import (
    EnsembleResult,
    Member,
    MemberOutcome,
    QuorumError,
    run_ensemble,
)
from crucible_ensemble.normalise import GSM8K_FINAL_ANSWER, Normaliser
from crucible_ensemble.similarity import token_overlap
from crucible_ensemble.strategies import (
    BestConfidence,
    Majority,
    RankedChoice,
    SemanticSimilarity,
    Strategy,
    Unanimous,
    Weighted,
    build_strategy,
)
from crucible_ensemble.votes import Candidate, Decision, Vote, make_vote

__all__ = [
    "GSM8K_FINAL_ANSWER",
    "BestConfidence",
    "Candidate",
    "Decision",
    "EnsembleBackend",
    "EnsembleResult",
    "Majority",
    "Member",
    "MemberOutcome",
    "Normaliser",
    "QuorumError",
    "RankedChoice",
    "SemanticSimilarity",
    "Strategy",
    "Unanimous",
    "Vote",
    "Weighted",
    "build_strategy",
    "make_vote",
    "run_ensemble",
    "token_overlap",
]

"""crucible-ensemble's hooks: the voting strategies and the ``ensemble`` backend."""

from __future__ import annotations

from crucible_core import RegisterBackend, RegisterEnsembleStrategy, hookimpl
from crucible_core.ir import Capabilities

_STRATEGIES = {
    "majority": ("Majority", "one member, one vote; the most common answer wins"),
    "weighted": ("Weighted", "per-member weights; the heaviest answer wins"),
    "best_confidence": ("BestConfidence", "the most confident answer (mean token logprob)"),
    "unanimous": ("Unanimous", "the common answer if all agree, else a fallback strategy"),
    "ranked_choice": ("RankedChoice", "Borda count over each member's n samples"),
    "semantic_similarity": ("SemanticSimilarity", "clusters similar answers; biggest wins"),
}


@hookimpl
def register_ensemble_strategies(register: RegisterEnsembleStrategy) -> None:
    for name, (attr, summary) in _STRATEGIES.items():
        register(name, f"crucible_ensemble.strategies:{attr}", summary=summary)


@hookimpl
def register_backends(register: RegisterBackend) -> None:
    register(
        "ensemble",
        "crucible_ensemble.backend:EnsembleBackend",
        summary="votes over several backends (options: members, strategy, mode, quorum, ...)",
        capabilities=Capabilities(backend_id="ensemble", provider="crucible-ensemble"),
    )

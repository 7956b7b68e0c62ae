"""crucible-hedging: cut tail latency with backup requests, under an enforced budget."""

from __future__ import annotations

from crucible_hedging.backend import HedgedBackend, build_policy, hedged_call
from crucible_hedging.budget import HedgeBudget
from crucible_hedging.policies import (
    Adaptive,
    Deadline,
    ExponentialBackoff,
    FixedDelay,
    HedgePlan,
    HedgePolicy,
    Observation,
    Percentile,
    percentile,
)

__all__ = [
    "Adaptive",
    "Deadline",
    "ExponentialBackoff",
    "FixedDelay",
    "HedgeBudget",
    "HedgePlan",
    "HedgePolicy",
    "HedgedBackend",
    "Observation",
    "Percentile",
    "build_policy",
    "hedged_call",
    "percentile",
]

"""crucible-hedging's hooks: the hedging policies and the ``hedged`` backend."""

from __future__ import annotations

from crucible_core import RegisterBackend, RegisterHedgingPolicy, hookimpl
from crucible_core.ir import Capabilities

_POLICIES = {
    "fixed": ("FixedDelay", "one backup after a fixed delay"),
    "percentile": ("Percentile", "one backup at the P-th percentile of recent latencies"),
    "adaptive": ("Adaptive", "Thompson sampling over candidate delays under the budget"),
    "backoff": ("ExponentialBackoff", "several backups at exponentially growing delays"),
    "deadline": ("Deadline", "a per-request deadline with a backup part-way"),
}


@hookimpl
def register_hedging_policies(register: RegisterHedgingPolicy) -> None:
    for name, (attr, summary) in _POLICIES.items():
        register(name, f"crucible_hedging.policies:{attr}", summary=summary)


@hookimpl
def register_backends(register: RegisterBackend) -> None:
    register(
        "hedged",
        "crucible_hedging.backend:HedgedBackend",
        summary="fires backup requests when a backend is slow, within a budget",
        capabilities=Capabilities(backend_id="hedged", provider="crucible-hedging"),
    )

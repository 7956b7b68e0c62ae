"""crucible-router's hooks: the ``routed`` backend and the ``crucible backends`` command."""

from __future__ import annotations

from crucible_core import RegisterBackend, RegisterCommand, RegisterRoutingPolicy, hookimpl
from crucible_core.ir import Capabilities


@hookimpl
def register_backends(register: RegisterBackend) -> None:
    register(
        "routed",
        "crucible_router.backend:RoutedBackend",
        summary="a primary and fallbacks behind per-backend circuit breakers",
        capabilities=Capabilities(backend_id="routed", provider="crucible-router"),
    )


@hookimpl
def register_routing_policies(register: RegisterRoutingPolicy) -> None:
    register(
        "primary",
        "crucible_router.policies:PrimaryFirst",
        summary="the primary, then the fallbacks in order (the default)",
    )
    register(
        "round_robin",
        "crucible_router.policies:RoundRobin",
        summary="each request starts one member further along",
    )
    register(
        "adaptive",
        "crucible_router.policies:AdaptivePolicy",
        summary="Thompson sampling on observed latency, errors, cost and fed-back quality",
    )


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register(
        "backends",
        "crucible_router.cli:BackendsCommand",
        summary="Backends' circuit-breaker states (status [--json])",
    )

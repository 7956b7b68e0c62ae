"""crucible-router: fallbacks and per-backend circuit breakers, as an ``InferenceBackend``."""

from __future__ import annotations

from crucible_router.backend import TRAINING_METHODS, Member, RoutedBackend, fails_over
from crucible_router.breaker import STATES, BreakerState, CircuitBreaker, Permit
from crucible_router.limits import Limits, LimitStore, RateLimiter
from crucible_router.state import BreakerStateFile, default_path

__all__ = [
    "STATES",
    "TRAINING_METHODS",
    "BreakerState",
    "BreakerStateFile",
    "CircuitBreaker",
    "LimitStore",
    "Limits",
    "Member",
    "Permit",
    "RateLimiter",
    "RoutedBackend",
    "default_path",
    "fails_over",
]

"""Who is calling: the bearer token's tenant and scopes, and its rate limit.

With a :class:`~crucible_server.tokens.TokenStore` every request needs
``Authorization: Bearer crk_...``; a missing or bad token is 401
(``auth_error``), a token lacking the scope is 403 (``forbidden``), a token
over its rate is 429 (``rate_limited``). Without a store (``open`` mode,
loopback only, see :mod:`crucible_server.cli`) every caller is tenant
``default`` with every scope.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from crucible_core.errors import AuthError, Forbidden, RateLimited
from crucible_server.tokens import SCOPES, TokenStore

__all__ = ["OPEN_PRINCIPAL", "Principal", "RateLimiter", "authenticate"]


@dataclass(frozen=True)
class Principal:
    """The caller: a tenant, its scopes, and the token id that proved it."""

    tenant_id: str
    scopes: frozenset[str]
    token_id: str

    def require(self, scope: str) -> None:
        """Forbidden unless the caller has ``scope`` (``admin`` has all)."""
        if scope not in self.scopes and "admin" not in self.scopes:
            raise Forbidden(
                f"this token lacks the {scope!r} scope",
                hint=f"create a token with --scopes {scope}",
                scope=scope,
            )


OPEN_PRINCIPAL = Principal("default", frozenset(SCOPES), "open")


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, *, now: float | None = None) -> None:
        """Spend one request of ``key``; RateLimited (with ``retry_after_s``) if none is left."""
        t = time.monotonic() if now is None else now
        with self._lock:
            level, last = self._buckets.get(key, (float(self.burst), t))
            level = min(float(self.burst), level + (t - last) * self.rate)
            if level < 1.0:
                self._buckets[key] = (level, t)
                wait = (1.0 - level) / self.rate
                raise RateLimited(
                    f"rate limit of {self.rate:g} requests/s exceeded",
                    hint=f"retry after {wait:.2f} s",
                    retry_after_s=round(wait, 3),
                )
            self._buckets[key] = (level - 1.0, t)


def authenticate(
    authorization: str | None, tokens: TokenStore | None, limiter: RateLimiter | None
) -> Principal:
    """The principal of a request's ``Authorization`` header (see the module docstring)."""
    if tokens is None:
        return OPEN_PRINCIPAL
    if not authorization or not authorization.lower().startswith("bearer "):
        raise AuthError(
            "this server needs a bearer token (Authorization: Bearer crk_...)",
            hint="create one with `crucible tokens create --tenant T --scopes jobs:read`",
        )
    info = tokens.verify(authorization[7:].strip())
    if limiter is not None:
        limiter.take(info.id)
    return Principal(info.tenant_id, info.scopes, info.id)

"""The typed errors the server's engine raises; :mod:`~crucible_tinker.server.app` alone
turns them into HTTP statuses.

The engine speaks crucible's error hierarchy (:mod:`crucible_core.errors`):
a request it refuses is a :class:`~crucible_core.errors.ConfigError`
(naming the field), an unknown id a :class:`~crucible_core.errors.NotFound`,
a state clash a :class:`~crucible_core.errors.Conflict`. The tinker protocol
needs :class:`~crucible_core.errors.Gone` too, for ids that existed and no
longer do (a finished session, a closed model, an expired future), which the
SDK treats differently from "unknown" (it stops heartbeating, resubmits a
sample).
"""

from __future__ import annotations

from crucible_core.errors import ConfigError, Gone

__all__ = ["Gone", "require_seq"]


def require_seq(value: int | None, name: str) -> int:
    """``value``, or ConfigError naming the field when the request left it out."""
    if value is None:
        raise ConfigError(f"`{name}` (an integer) is required")
    return value

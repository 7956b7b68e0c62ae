"""Reading a sink's numeric settings from the environment, with the error a user can act on.

Why: each interop sink takes a few positive numbers from variables of its own
prefix (``CRUCIBLE_MLFLOW_QUEUE``, ``CRUCIBLE_OPENLINEAGE_TIMEOUT_S``...);
one reader gives them all the same rule and the same message.
"""

from __future__ import annotations

from collections.abc import Mapping

from crucible_core.errors import ConfigError

__all__ = ["positive_number"]


def positive_number(
    env: Mapping[str, str], name: str, default: float, *, integer: bool = False
) -> float:
    """``env[name]`` as a number > 0 (a whole number if ``integer``); ``default`` if unset.

    Unset or blank gives ``default``. Anything else that is not such a number
    raises :class:`~crucible_core.errors.ConfigError` naming ``name`` and the fix.
    """
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    kind = "a whole number" if integer else "a number"
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not {kind}",
            hint=f"set {name} to {kind} greater than 0, or unset it",
        ) from None
    if not value > 0:
        raise ConfigError(
            f"{name} must be greater than 0, got {raw}",
            hint=f"unset {name} for the default ({default:g})",
        )
    return value

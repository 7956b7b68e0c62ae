"""Rewording a crucible error without losing what it is."""

from __future__ import annotations

from typing import Any, cast

from crucible_core.errors import CrucibleError

__all__ = ["reworded"]


def reworded(exc: CrucibleError, message: str, **details: Any) -> CrucibleError:
    """A copy of ``exc`` with ``message`` and extra ``details``: same class, hint, state.

    Used to say *where* an error happened (a file, a stage) while keeping its
    class, so its exit code and ``retryable`` still apply. Built through the
    error's own pickling recipe, which every subclass keeps working.
    """
    rebuild, (cls, _message, hint, state) = exc.__reduce__()
    copy = cast(CrucibleError, rebuild(cls, message, hint, {**state, **details}))
    copy.__cause__ = exc
    return copy

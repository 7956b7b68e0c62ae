"""The one error hierarchy of Crucible.

Every error a user can cause or meet is a :class:`CrucibleError`. Each class
carries a stable ``code`` (a snake_case string that scripts and HTTP clients may
match on), a message that says what failed and where, and an optional ``hint``
that says what to do. Categories also inherit the stdlib exception they stand
for (``ConfigError`` is a ``ValueError``, ``NotFound`` a ``KeyError``...), so
code that catches the stdlib type keeps working.

How a code maps to a CLI exit status and to an HTTP status is decided in one
place, :data:`ERROR_TABLE`; the CLI and the REST server both read it.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ERROR_TABLE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "AuthError",
    "BackendError",
    "BudgetExhausted",
    "Cancelled",
    "CapacityError",
    "ConfigError",
    "Conflict",
    "CrucibleError",
    "DeadlineExceeded",
    "Diverged",
    "Forbidden",
    "Gone",
    "IntegrityError",
    "NotFound",
    "PluginError",
    "PluginLoadError",
    "RateLimited",
    "TooLarge",
    "UnsupportedError",
    "ValidationError",
    "exit_code_for",
    "http_status_for",
]

EXIT_OK = 0
EXIT_INTERRUPTED = 130


class CrucibleError(Exception):
    """Root of every Crucible error.

    ``message`` says what failed and where; ``hint`` (optional) says what to
    do about it. ``code`` is stable across releases.
    """

    code: ClassVar[str] = "crucible_error"

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors do not survive the default Exception
        # pickling; errors cross process boundaries (process executor), so
        # rebuild them explicitly.
        return (_rebuild, (type(self), self.message, self.hint, self._state()))

    def _state(self) -> dict[str, Any]:
        return dict(self.details)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view: what the CLI prints with ``--json`` and the server returns."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        out.update(self._public_details())
        return out

    def _public_details(self) -> dict[str, Any]:
        return {k: v for k, v in self.details.items() if _jsonable(v)}


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict)


def _rebuild(
    cls: type[CrucibleError], message: str, hint: str | None, state: dict[str, Any]
) -> CrucibleError:
    return cls(message, hint=hint, **state)


class ConfigError(CrucibleError, ValueError):
    """A configuration the user wrote cannot be used (bad value, bad file, bad combination)."""

    code = "config_error"


class ValidationError(ConfigError):
    """An IR document failed validation; ``path`` is the JSON path of the bad field (``$.a.b``)."""

    code = "validation_error"

    def __init__(
        self, message: str, *, path: str = "$", hint: str | None = None, **details: Any
    ) -> None:
        super().__init__(message, hint=hint, **details)
        self.path = path

    def _state(self) -> dict[str, Any]:
        return {"path": self.path, **self.details}

    def _public_details(self) -> dict[str, Any]:
        return {"path": self.path, **super()._public_details()}


class UnsupportedError(ConfigError):
    """A setting is valid IR but the chosen backend or plugin cannot honour it."""

    code = "unsupported"


class PluginError(CrucibleError):
    """A plugin misbehaved: duplicate registration, bad registration, bad factory."""

    code = "plugin_error"


class PluginLoadError(PluginError, ImportError):
    """A plugin could not be imported or its hooks failed."""

    code = "plugin_load_error"


class BackendError(CrucibleError, RuntimeError):
    """A backend call failed. ``retryable`` tells the scheduler whether to try again."""

    code = "backend_error"
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        retryable: bool | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, hint=hint, **details)
        self.retryable = self.default_retryable if retryable is None else retryable

    def _state(self) -> dict[str, Any]:
        return {"retryable": self.retryable, **self.details}

    def _public_details(self) -> dict[str, Any]:
        return {"retryable": self.retryable, **super()._public_details()}


class CapacityError(BackendError):
    """The backend is out of capacity (rate limit, queue full); retrying later may work."""

    code = "capacity"
    default_retryable = True


class DeadlineExceeded(BackendError, TimeoutError):
    """A call ran past its deadline. Names the backend, the call and how long it waited."""

    code = "timeout"
    default_retryable = True


class NotFound(CrucibleError, KeyError):
    """A named thing (job, run, plugin, backend, artifact) does not exist."""

    code = "not_found"


class Gone(NotFound):
    """A named thing existed and has ended (a finished session, an expired future): HTTP 410."""

    code = "gone"


class Conflict(CrucibleError):
    """The request conflicts with the current state (illegal transition, duplicate name)."""

    code = "conflict"


class AuthError(CrucibleError, PermissionError):
    """Missing or invalid credentials."""

    code = "auth_error"


class Forbidden(AuthError):
    """Valid credentials that do not allow this action (a missing scope)."""

    code = "forbidden"


class RateLimited(CapacityError):
    """A client sent more requests than its rate limit allows; retry after a pause."""

    code = "rate_limited"


class TooLarge(ConfigError):
    """A request or document is larger than the configured maximum."""

    code = "too_large"


class Cancelled(CrucibleError):
    """Work was cancelled cooperatively."""

    code = "cancelled"


class BudgetExhausted(CrucibleError):
    """A run reached one of its budgets (cost, tokens, wall time) and stopped cleanly."""

    code = "budget_exhausted"


class Diverged(CrucibleError, ArithmeticError):
    """Training produced a non-finite loss (nan/inf); the run stopped, good checkpoints kept."""

    code = "diverged"


class IntegrityError(CrucibleError):
    """A stored file no longer matches the sha256 recorded for it (corrupted or edited)."""

    code = "integrity_error"


#: code -> (CLI exit status, HTTP status). The one place this mapping lives.
ERROR_TABLE: dict[str, tuple[int, int]] = {
    "crucible_error": (1, 500),
    "config_error": (2, 400),
    "validation_error": (2, 422),
    "unsupported": (2, 422),
    "plugin_error": (3, 500),
    "plugin_load_error": (3, 500),
    "backend_error": (1, 502),
    "capacity": (1, 503),
    "timeout": (1, 504),
    "not_found": (4, 404),
    "gone": (4, 410),
    "conflict": (1, 409),
    "auth_error": (2, 401),
    "forbidden": (2, 403),
    "rate_limited": (1, 429),
    "too_large": (2, 413),
    "cancelled": (1, 409),
    "budget_exhausted": (1, 402),
    "diverged": (1, 422),
    "integrity_error": (1, 500),
}


def _lookup(exc: BaseException) -> tuple[int, int]:
    if isinstance(exc, KeyboardInterrupt):
        return (EXIT_INTERRUPTED, 499)
    if isinstance(exc, CrucibleError):
        for cls in type(exc).__mro__:
            code = getattr(cls, "code", None)
            if isinstance(code, str) and code in ERROR_TABLE:
                return ERROR_TABLE[code]
    return ERROR_TABLE["crucible_error"]


def exit_code_for(exc: BaseException) -> int:
    """The CLI exit status for an exception (1 for anything that is not a Crucible error)."""
    return _lookup(exc)[0]


def http_status_for(exc: BaseException) -> int:
    """The HTTP status the REST server answers with for an exception."""
    return _lookup(exc)[1]

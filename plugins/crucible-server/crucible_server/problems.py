"""RFC 9457 problem+json responses for Crucible errors.

The HTTP status of an error comes from :func:`crucible_core.errors.http_status_for`
(the one code -> status table in ``crucible_core/errors.py``); this module only
shapes the body: ``type``, ``title``, ``status``, ``detail``, plus ``code``
(the stable Crucible error code), ``hint`` and the error's public details.
"""

from __future__ import annotations

from typing import Any, Final

from crucible_core.errors import CrucibleError, http_status_for

__all__ = ["PROBLEM_JSON", "PROBLEM_SCHEMA", "problem_body"]

PROBLEM_JSON: Final = "application/problem+json"
_TYPE_BASE: Final = "https://crucible.dev/errors/"

#: The OpenAPI schema of a problem body (components/schemas/Problem).
PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details carrying the Crucible error code.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "hint": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail", "code"],
}


def problem_body(exc: CrucibleError) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` for ``exc``; the status from the shared table."""
    status = http_status_for(exc)
    details = exc.to_dict()
    code = str(details.pop("code"))
    message = str(details.pop("message"))
    body: dict[str, Any] = {
        "type": _TYPE_BASE + code,
        "title": code.replace("_", " "),
        "status": status,
        "detail": message,
        "code": code,
        **details,
    }
    return status, body

"""The one rule for the ids that name jobs, runs and experiments.

An id becomes a directory name (``$CRUCIBLE_HOME/runs/<id>``), a database key
and a path segment in URLs, so it must be a plain name: 1 to
:data:`MAX_ID_LENGTH` characters among letters, digits and ``. _ : @ -``,
starting with a letter or digit, with no ``..`` anywhere. That refuses ``/``,
``..``, the empty string, control characters and names longer than a file
system accepts. The IR (``Identifier`` in :mod:`crucible_core.ir.base`), the
run directories (:func:`crucible_core.records.paths.run_dir`), the scheduler
and the CLI's run lookup all use this module, so the rule cannot drift.
"""

from __future__ import annotations

import os
import re
import time

from crucible_core.errors import ConfigError

__all__ = [
    "ID_HINT",
    "ID_PATTERN",
    "MAX_ID_LENGTH",
    "check_id",
    "is_valid_id",
    "new_id",
    "shown",
]

#: The longest id (file systems allow 255 bytes per name; leave room for suffixes).
MAX_ID_LENGTH = 200
#: A letter or digit, then letters, digits and ``. _ : @ -`` with no two dots in a row.
#: ``(?!\n)`` because Python's ``$`` also matches before a final newline (msgspec
#: checks patterns with ``re.search``); ECMA-262 validators read it the same way.
ID_PATTERN = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_:@-])*\.?$(?!\n)"
ID_HINT = (
    f"ids are 1 to {MAX_ID_LENGTH} letters, digits and . _ : @ -, starting with a letter or "
    "digit, without '..' or '/'"
)

_ID = re.compile(ID_PATTERN)


def is_valid_id(value: str) -> bool:
    """Whether ``value`` is a usable job/run id (see the module docstring)."""
    return len(value) <= MAX_ID_LENGTH and _ID.fullmatch(value) is not None


def check_id(value: str, *, what: str = "id") -> str:
    """``value`` if it is a valid id; else a ``ConfigError`` (exit 2) saying why."""
    if is_valid_id(value):
        return value
    raise ConfigError(f"{what} {shown(value)} is not a valid id", hint=ID_HINT)


def shown(value: str, limit: int = 60) -> str:
    """``repr(value)``, shortened so a 5,000-character argument still gives a one-line error."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}...{text[-12:]} ({len(value)} characters)"


def new_id(prefix: str, *, now: float | None = None) -> str:
    """A fresh id ``<prefix>-YYYYmmdd-HHMMSS-<10 hex>`` (UTC) that obeys the id rule.

    Ids sort by creation time to the second (new rows land at the end of an id
    index; a person can read when a run started), and 40 random bits make two
    ids made in the same second collide about once in 10**12 pairs.
    """
    # time.strftime and os.urandom: half the cost of datetime formatting and secrets (the
    # API makes one per submission); the same text, the same randomness source.
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{prefix}-{stamp}-{os.urandom(5).hex()}"

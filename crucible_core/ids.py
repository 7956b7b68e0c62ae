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

import math
import os
import re
import threading
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
    return f"{prefix}-{_stamp(time.time() if now is None else now)}-{_random_hex(5)}"


# The API makes an id per submission, and on small VMs each system call costs
# microseconds: the formatted second is kept until the clock moves on, and the random
# bytes (os.urandom, as secrets uses) are read 4 KB at a time. A forked child drops the
# parent's unread bytes, so the two never hand out the same ones.
_stamp_cache: tuple[int, str] = (-(2**62), "")
_pool: bytes = b""
_pool_at = 0
_pool_lock = threading.Lock()


def _stamp(now: float) -> str:
    global _stamp_cache
    second = math.floor(now)
    cached = _stamp_cache
    if cached[0] != second:
        cached = _stamp_cache = (second, time.strftime("%Y%m%d-%H%M%S", time.gmtime(second)))
    return cached[1]


def _random_hex(n: int) -> str:
    global _pool, _pool_at
    with _pool_lock:
        if _pool_at + n > len(_pool):
            _pool, _pool_at = os.urandom(max(4096, n)), 0
        out = _pool[_pool_at : _pool_at + n]
        _pool_at += n
    return out.hex()


def _drop_pool() -> None:
    global _pool, _pool_at
    _pool, _pool_at = b"", 0


os.register_at_fork(after_in_child=_drop_pool)

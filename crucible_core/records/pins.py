"""Pins: artifacts that something outside their run depends on, so no clean-up deletes them.

A pin is a small JSON file ``$CRUCIBLE_HOME/pins/<sha256>/<holder key>.json``
(``holder``, ``note``, ``pinned_at``); an artifact (a file, or a directory by
its tree digest, as the run manifest records it) is pinned while its
directory holds at least one pin. Files, not a database table, so that any
process (a training run retiring checkpoints, a future ``crucible runs``
clean-up, a store garbage collector) can ask cheaply and without a schema,
and so a crash leaves either the old pin set or the new one (each pin is
written atomically).

The rule every deletion of run files or store objects follows: ask
:func:`is_pinned` first and keep what is pinned. Checkpoint retention does
(``train.run``); crucible-registry pins every registered version's
artifacts with holder ``crucible-registry:<name>:...``.

Supported surface: :func:`pin`, :func:`unpin`, :func:`is_pinned`, :func:`holders`.
"""

from __future__ import annotations

import contextlib
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.errors import ConfigError
from crucible_core.records import paths

__all__ = ["holders", "is_pinned", "pin", "pins_dir", "unpin"]


def pins_dir() -> Path:
    """``$CRUCIBLE_HOME/pins``."""
    return paths.crucible_home() / "pins"


def _folder(sha256: str) -> Path:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ConfigError(
            f"{sha256!r} is not a sha256 digest", hint="give the 64 lowercase hex digits"
        )
    return pins_dir() / sha256


def _key(holder: str) -> str:
    if not holder:
        raise ConfigError("a pin needs a holder name", hint="say who depends on the artifact")
    return hashlib.sha256(holder.encode()).hexdigest()[:32] + ".json"


def pin(sha256: str, holder: str, *, note: str = "") -> None:
    """Pin ``sha256`` for ``holder`` (idempotent: pinning again keeps one pin)."""
    from crucible_core.records.artifacts import write_json

    folder = _folder(sha256)
    record = {"holder": holder, "note": note, "pinned_at": datetime.now(UTC).isoformat()}
    for _ in range(10):  # an unpin of the last holder may remove the folder in between
        folder.mkdir(parents=True, exist_ok=True)
        try:
            write_json(folder / _key(holder), record)
            return
        except FileNotFoundError:
            continue
    write_json(folder / _key(holder), record)


def unpin(sha256: str, holder: str) -> bool:
    """Remove ``holder``'s pin of ``sha256``; True if there was one."""
    folder = _folder(sha256)
    try:
        (folder / _key(holder)).unlink()
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when no other holder is left
    return True


def holders(sha256: str) -> list[dict[str, Any]]:
    """The pins of ``sha256`` (``holder``, ``note``, ``pinned_at``), oldest first."""
    folder = _folder(sha256)
    out: list[dict[str, Any]] = []
    try:
        files = sorted(folder.glob("*.json"))
    except OSError:
        return out
    for f in files:
        try:
            data = msgspec.json.decode(f.read_bytes())
        except (OSError, msgspec.DecodeError):
            data = {"holder": f.stem, "note": "unreadable pin file", "pinned_at": ""}
        if isinstance(data, dict):
            out.append(cast(dict[str, Any], data))
    return sorted(out, key=lambda d: str(d.get("pinned_at", "")))


def is_pinned(sha256: str | None) -> bool:
    """Whether anything pins ``sha256`` (None, an artifact with no digest, is never pinned)."""
    if not sha256:
        return False
    try:
        folder = _folder(sha256)
    except ConfigError:
        return False
    try:
        return any(folder.glob("*.json"))
    except OSError:
        return False

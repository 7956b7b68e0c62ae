"""API tokens: scoped, bound to one tenant, stored hashed in SQLite.

A token reads ``crk_<id>_<secret>``. Only ``sha256(secret)`` is stored (in
``$CRUCIBLE_HOME/server_tokens.db``); the plaintext is returned once, by
:meth:`TokenStore.create`, and never again. :meth:`TokenStore.verify` looks
the row up by its public ``id`` and compares digests with
:func:`hmac.compare_digest`, so the comparison takes the same time whatever
the secret. A revoked or expired token is refused like an unknown one.

The API verifies a token on every request, so a verified token is remembered
(by id, with its digest, compared again in constant time) while the token
file is unchanged (the WAL's, else the file's, size, times and inode: one
``stat``, no SQLite lock) and for at most :data:`VERIFIED_MAX_AGE_S`. A revoke
or create, from this process or from ``crucible tokens`` in another, writes
the file and so ends the reuse on the next request; the age bound covers a
write the timestamps cannot tell apart. Expiry is checked on every call.

Scopes: ``jobs:read``, ``jobs:write``, ``artifacts:read``, ``admin`` (admin
implies every other scope).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from crucible_core.errors import AuthError, ConfigError, NotFound
from crucible_core.records.wal import use_wal

__all__ = ["SCOPES", "TokenInfo", "TokenStore", "parse_duration"]

SCOPES: Final = ("jobs:read", "jobs:write", "artifacts:read", "admin")
TOKENS_FILE: Final = "server_tokens.db"
_PREFIX: Final = "crk"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: Longest reuse of a verification without reading the token table again (seconds).
VERIFIED_MAX_AGE_S: Final = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
)
"""


@dataclass(frozen=True)
class TokenInfo:
    """What is known about a token (never its secret)."""

    id: str
    tenant_id: str
    scopes: frozenset[str]
    name: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def allows(self, scope: str) -> bool:
        """Whether this token carries ``scope`` (``admin`` carries all)."""
        return scope in self.scopes or "admin" in self.scopes

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view for ``tokens list --json``."""
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "scopes": sorted(self.scopes),
            "name": self.name,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``15m``, ``90s``, ``2w`` -> seconds; ConfigError otherwise."""
    m = _DURATION.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise ConfigError(
            f"--expires {text!r} is not a duration", hint="write a number and a unit: 30d, 12h, 90m"
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes as a set; ConfigError naming an unknown one."""
    out = frozenset(s.strip() for s in scopes if s.strip())
    if not out:
        raise ConfigError("a token needs at least one scope", hint=f"scopes: {', '.join(SCOPES)}")
    bad = sorted(out - set(SCOPES))
    if bad:
        raise ConfigError(
            f"unknown scope {bad[0]!r}", hint=f"scopes: {', '.join(SCOPES)} (comma separated)"
        )
    return out


class TokenStore:
    """The hashed token table in ``path`` (default ``$CRUCIBLE_HOME/server_tokens.db``)."""

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            from crucible_core.records.paths import crucible_home

            path = crucible_home() / TOKENS_FILE
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout = 10000")
        # Every API request verifies a token: in WAL mode a read takes no file lock (half
        # the time of a rollback-journal read) and never waits for `tokens create/revoke`.
        use_wal(self._conn)
        self._conn.execute(_SCHEMA)
        self._wal = f"{self.path}-wal"
        # token id -> (verified at, file state then, digest, info)
        self._verified: dict[str, _Verified] = {}

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def create(
        self,
        tenant_id: str,
        scopes: Iterable[str],
        *,
        expires_in_s: float | None = None,
        name: str = "",
    ) -> tuple[str, TokenInfo]:
        """Make a token; returns ``(plaintext, info)``. The plaintext is not stored anywhere."""
        if not _TENANT.match(tenant_id):
            raise ConfigError(
                f"--tenant {tenant_id!r} is not a tenant name",
                hint="letters, digits, '_', '.', '-' (at most 64, starting with a letter or digit)",
            )
        scope_set = check_scopes(scopes)
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        expires = now + expires_in_s if expires_in_s is not None else None
        with self._lock:
            self._conn.execute(
                "INSERT INTO tokens (id, digest, tenant_id, scopes, name, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    token_id,
                    _digest(secret),
                    tenant_id,
                    ",".join(sorted(scope_set)),
                    name,
                    now,
                    expires,
                ),
            )
        info = TokenInfo(token_id, tenant_id, scope_set, name, now, expires, None)
        return f"{_PREFIX}_{token_id}_{secret}", info

    def verify(self, token: str, *, now: float | None = None) -> TokenInfo:
        """The token's info; AuthError (same message whatever the reason) if it is not valid."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise _refused()
        token_id, digest = parts[1], _digest(parts[2])
        state, clock = self._file_state(), time.monotonic()
        hit = self._verified.get(token_id)
        if (
            hit is not None
            and hit[1] == state
            and clock - hit[0] < VERIFIED_MAX_AGE_S
            and hmac.compare_digest(hit[2], digest)
        ):
            info = hit[3]
        else:
            info, stored = self._row(token_id)
            # Compare even when the id is unknown, so timing does not tell ids apart.
            ok = hmac.compare_digest(digest, stored or "0" * 64)
            if info is None or not ok or info.revoked_at is not None:
                raise _refused()
            self._remember(token_id, (clock, state, digest, info))
        if info.expires_at is not None and (now or time.time()) >= info.expires_at:
            raise _refused()
        return info

    def _file_state(self) -> tuple[int, ...]:
        """What changes whenever the token table is written: in WAL mode every commit
        writes the WAL file (the main file changes only when a checkpoint copies the
        WAL into it), else the main file. One ``stat``."""
        for which, name in enumerate((self._wal, self.path)):
            try:
                st = os.stat(name)
            except FileNotFoundError:
                continue
            return (which, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return ()

    def _remember(self, token_id: str, entry: _Verified) -> None:
        with self._lock:
            if len(self._verified) >= 10_000:  # bounded: stale entries are useless anyway
                self._verified.clear()
            self._verified[token_id] = entry

    def list(self) -> list[TokenInfo]:
        """Every token, oldest first (revoked ones included)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, tenant_id, scopes, name, created_at, expires_at, revoked_at "
                "FROM tokens ORDER BY created_at"
            ).fetchall()
        return [_info(r) for r in rows]

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token by id (idempotent); NotFound if there is no such token."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
                (time.time(), token_id),
            )
        self._verified.pop(token_id, None)
        if cur.rowcount == 0:
            raise NotFound(f"no token {token_id!r}", hint="`crucible tokens list` shows the ids")
        info, _ = self._row(token_id)
        assert info is not None
        return info

    def active(self) -> bool:
        """Whether any unrevoked token exists (the server then requires tokens)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT EXISTS (SELECT 1 FROM tokens WHERE revoked_at IS NULL)"
            ).fetchone()
        return bool(row[0])

    def _row(self, token_id: str) -> tuple[TokenInfo | None, str | None]:
        with self._lock:
            row = self._conn.execute(
                "SELECT id, tenant_id, scopes, name, created_at, expires_at, revoked_at, digest "
                "FROM tokens WHERE id = ?",
                (token_id,),
            ).fetchone()
        if row is None:
            return None, None
        return _info(row[:7]), str(row[7])


#: A remembered verification: when, the token file's state then, the digest, the info.
_Verified = tuple[float, tuple[int, ...], str, TokenInfo]


def _refused() -> AuthError:
    return AuthError(
        "the bearer token is not valid (unknown, revoked or expired)",
        hint="create one with `crucible tokens create --tenant T --scopes jobs:read`",
    )


def _info(row: tuple[object, ...]) -> TokenInfo:
    scopes = str(row[2])
    return TokenInfo(
        id=str(row[0]),
        tenant_id=str(row[1]),
        scopes=frozenset(scopes.split(",")) if scopes else frozenset(),
        name=str(row[3]),
        created_at=float(row[4]),  # type: ignore[arg-type]
        expires_at=None if row[5] is None else float(row[5]),  # type: ignore[arg-type]
        revoked_at=None if row[6] is None else float(row[6]),  # type: ignore[arg-type]
    )

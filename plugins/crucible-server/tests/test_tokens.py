"""The token store (real SQLite): hashed at rest, scoped, tenant-bound, revocable, expiring;
the per-token rate limiter; the plugin's modules import nothing heavy."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from crucible_server.auth import RateLimiter
from crucible_server.tokens import VERIFIED_MAX_AGE_S, TokenStore, parse_duration
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.errors import AuthError, ConfigError, NotFound, RateLimited
from crucible_core.testing import check_light_import


def test_only_the_sha256_of_the_secret_is_stored(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "t.db")
    token, info = store.create("acme", ["jobs:read"])
    secret = token.split("_", 2)[2]
    store.close()
    raw = (tmp_path / "t.db").read_bytes()
    assert secret.encode() not in raw
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in raw
    again = TokenStore(tmp_path / "t.db")
    assert again.verify(token).tenant_id == "acme"
    assert again.verify(token).id == info.id
    again.close()


def test_verify_refuses_forged_revoked_and_expired_tokens(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "t.db")
    token, info = store.create("acme", ["jobs:read", "jobs:write"], expires_in_s=60)
    assert store.verify(token).scopes == frozenset({"jobs:read", "jobs:write"})
    prefix, tid, secret = token.split("_", 2)
    for forged in (
        f"{prefix}_{tid}_{secret[:-1]}x"
        if not secret.endswith("x")
        else f"{prefix}_{tid}_{secret[:-1]}y",
        f"{prefix}_000000000000_{secret}",
        f"xx_{tid}_{secret}",
        secret,
        "",
    ):
        with pytest.raises(AuthError):
            store.verify(forged)
    with pytest.raises(AuthError):
        store.verify(token, now=time.time() + 61)
    store.revoke(info.id)
    with pytest.raises(AuthError):
        store.verify(token)
    assert not store.active()
    with pytest.raises(NotFound):
        store.revoke("nope")
    store.close()


def test_scopes_and_tenants_are_checked(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "t.db")
    with pytest.raises(ConfigError, match="jobs:reed"):
        store.create("acme", ["jobs:reed"])
    with pytest.raises(ConfigError, match="at least one scope"):
        store.create("acme", [])
    with pytest.raises(ConfigError, match="tenant"):
        store.create("../etc", ["jobs:read"])
    _, admin = store.create("acme", ["admin"])
    assert admin.allows("artifacts:read")
    _, reader = store.create("acme", ["jobs:read"])
    assert not reader.allows("jobs:write")
    store.close()


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from("smhdw"))
def test_parse_duration_round_trips(n: int, unit: str) -> None:
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_duration(f"{n}{unit}") == n * seconds


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "-1d", "1.5h", "30 days", "1y"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


@given(st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=60))
def test_rate_limiter_never_exceeds_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    limiter = RateLimiter(rate=4.0, burst=3)
    now = 0.0
    allowed = 0
    for gap in gaps:
        now += gap
        try:
            limiter.take("k", now=now)
            allowed += 1
        except RateLimited:
            pass
    assert allowed <= 3 + 4.0 * now + 1e-9


def test_plugin_modules_import_nothing_heavy() -> None:
    for module in ("crucible_server.plugin", "crucible_server.cli", "crucible_server.tokens"):
        check_light_import(module, heavy=["fastapi", "uvicorn", "starlette", "torch", "httpx"])


def _selects(store: TokenStore) -> list[str]:
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)  # pyright: ignore[reportPrivateUsage]
    return seen


def test_a_verification_is_reused_only_while_the_token_file_is_unchanged(tmp_path: Path) -> None:
    """The API's store and `crucible tokens` (another connection) on one file."""
    api = TokenStore(tmp_path / "t.db")
    cli = TokenStore(tmp_path / "t.db")
    token, info = cli.create("acme", ["jobs:read"])
    other, _ = cli.create("acme", ["jobs:read"])
    sql = _selects(api)
    assert api.verify(token).id == info.id
    assert api.verify(token).id == info.id
    assert len(sql) == 1  # the second check read no row
    prefix, tid, secret = token.split("_", 2)
    with pytest.raises(AuthError):  # a remembered id with another secret
        api.verify(f"{prefix}_{tid}_{secret[::-1]}")
    cli.revoke(info.id)  # from the other connection: refused on the very next request
    with pytest.raises(AuthError):
        api.verify(token)
    assert api.verify(other).tenant_id == "acme"
    api.close()
    cli.close()


def test_a_verification_is_read_again_after_its_max_age(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "t.db")
    token, _ = store.create("acme", ["jobs:read"])
    sql = _selects(store)
    store.verify(token)
    store.verify(token)
    assert len(sql) == 1
    time.sleep(VERIFIED_MAX_AGE_S + 0.05)
    store.verify(token)
    assert len(sql) == 2
    store.close()

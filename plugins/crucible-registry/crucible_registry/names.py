"""What a user may type: model names, aliases, tag pairs and model references.

A reference is ``NAME``, ``NAME/VERSION``, ``NAME/latest`` or ``NAME@ALIAS``,
optionally written as a URI ``models:/NAME@ALIAS``. Bad input is a
``ConfigError`` naming the value and the rule (exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from crucible_core.errors import ConfigError

__all__ = ["SCHEME", "ModelRef", "check_alias", "check_name", "parse_ref", "parse_tag"]

SCHEME: Final = "models:/"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_RESERVED_ALIASES = frozenset({"latest"})
NAME_RULE: Final = (
    "1-128 characters: letters, digits, '.', '_', '-', starting with a letter or digit"
)
ALIAS_RULE: Final = "1-64 characters: lowercase letters, digits, '_', '-', starting with a letter"


def check_name(name: str) -> str:
    """``name`` if it is a valid model name, else ConfigError."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{name[:80]!r} is not a valid model name", hint=NAME_RULE)
    return name


def check_alias(alias: str) -> str:
    """``alias`` if it is a valid alias (``latest`` is reserved), else ConfigError."""
    if not _ALIAS.fullmatch(alias):
        raise ConfigError(f"{alias[:80]!r} is not a valid alias", hint=ALIAS_RULE)
    if alias in _RESERVED_ALIASES:
        raise ConfigError(
            f"{alias!r} is reserved", hint="NAME/latest already means the newest version"
        )
    return alias


def parse_tag(text: str) -> tuple[str, str]:
    """``key=value`` -> (key, value); the key is 1-128 characters without '='."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or len(key) > 128 or len(value) > 4096:
        raise ConfigError(
            f"{text[:80]!r} is not a tag",
            hint="write KEY=VALUE (key 1-128 characters, value up to 4096)",
        )
    return key, value


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: a name and at most one of version, alias, or latest."""

    name: str
    version: int | None = None
    alias: str | None = None
    latest: bool = False

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return f"{self.name}/latest" if self.latest else self.name


def parse_ref(text: str) -> ModelRef:
    """Parse ``[models:/]NAME[/VERSION|/latest|@ALIAS]``."""
    body = text.removeprefix(SCHEME)
    if "@" in body:
        name, _, alias = body.partition("@")
        return ModelRef(check_name(name), alias=check_alias(alias))
    if "/" in body:
        name, _, tail = body.partition("/")
        check_name(name)
        if tail == "latest":
            return ModelRef(name, latest=True)
        if tail.isascii() and tail.isdigit() and 0 < int(tail) < 2**62:
            return ModelRef(name, version=int(tail))
        raise ConfigError(
            f"{text[:80]!r}: {tail[:40]!r} is not a version",
            hint="write NAME/3 (a version number), NAME/latest or NAME@ALIAS",
        )
    return ModelRef(check_name(body))

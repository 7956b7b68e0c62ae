"""Where the Tinker API key comes from, and how it is kept out of every output.

Resolution order (the first that gives a key wins):

1. the backend option ``api_key`` (discouraged: it ends up in config files);
2. the environment variable ``TINKER_API_KEY``;
3. the backend option ``api_key_file``, else ``$CRUCIBLE_TINKER_API_KEY_FILE``,
   else ``$XDG_CONFIG_HOME/crucible/tinker.toml`` (``~/.config/...``) if it exists.

A key file is either TOML with ``api_key = "tml-..."`` or a file holding only
the key. It must not be readable or writable by group or others (mode 0600 or
stricter); a looser file is refused with :class:`~crucible_core.errors.ConfigError`
before it is read.

The key is held in a :class:`Secret`, whose ``str``/``repr`` never show it;
:func:`redact` scrubs it from any text (error messages built from SDK
exceptions pass through it).
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from crucible_core.errors import AuthError, ConfigError

__all__ = [
    "API_KEY_ENV",
    "API_KEY_FILE_ENV",
    "Secret",
    "default_key_file",
    "read_key_file",
    "read_private_file",
    "redact",
    "refused_key_hint",
    "resolve_api_key",
]

API_KEY_ENV = "TINKER_API_KEY"
API_KEY_FILE_ENV = "CRUCIBLE_TINKER_API_KEY_FILE"
_MASK = "***"


class Secret:
    """A credential that never prints itself. ``reveal()`` is the only way to read it."""

    __slots__ = ("_source", "_value")

    def __init__(self, value: str, *, source: str = "") -> None:
        self._value = value
        self._source = source

    def reveal(self) -> str:
        """The credential itself: pass it to the SDK, never to a log or a message."""
        return self._value

    @property
    def source(self) -> str:
        """Where the key came from (``"env:TINKER_API_KEY"``, ``"file:/path"``, ``"option"``)."""
        return self._source

    def __repr__(self) -> str:
        return f"Secret({_MASK}, source={self._source!r})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not picklable: resolve the key again where it is needed")


def default_key_file(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/crucible/tinker.toml`` (``~/.config/crucible/tinker.toml``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "crucible" / "tinker.toml"


def read_key_file(path: str | os.PathLike[str]) -> Secret:
    """Read a key file after checking that only its owner can read or write it."""
    p = Path(path).expanduser()
    return Secret(_parse_key_text(read_private_file(p), p), source=f"file:{p}")


def read_private_file(path: str | os.PathLike[str]) -> str:
    """The text of a credentials file, refused (ConfigError) unless its mode is 0600 or stricter."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"Tinker API key file {p} does not exist",
            hint=f'create it with `api_key = "tml-..."` and `chmod 600 {p}`, or set {API_KEY_ENV}',
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"Tinker API key file {p} is not a regular file")
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if loose:
        raise ConfigError(
            f"Tinker API key file {p} has mode {stat.S_IMODE(st.st_mode):04o}: group or others "
            "can access it, so it is refused (an API key file must be 0600)",
            hint=f"chmod 600 {p}",
            path=str(p),
        )
    return p.read_text(encoding="utf-8")


def _parse_key_text(text: str, path: Path) -> str:
    stripped = text.strip()
    if not stripped:
        raise ConfigError(f"Tinker API key file {path} is empty")
    if "=" in stripped:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            # Never echo the parser's message: it quotes the offending line.
            raise ConfigError(
                f"Tinker API key file {path} is neither TOML nor a bare key",
                hint='write `api_key = "tml-..."` or only the key',
            ) from None
        value = data.get("api_key")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"Tinker API key file {path} has no string `api_key`")
        return value
    lines = stripped.splitlines()
    if len(lines) != 1:
        raise ConfigError(
            f"Tinker API key file {path} holds several lines but no `api_key = ...`",
            hint='write `api_key = "tml-..."` or only the key',
        )
    return lines[0].strip()


def resolve_api_key(
    api_key: str | None = None,
    api_key_file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Secret:
    """Find the API key (see the module docstring for the order); AuthError if there is none."""
    env = os.environ if environ is None else environ
    if api_key:
        return Secret(api_key, source="option")
    from_env = env.get(API_KEY_ENV)
    if from_env:
        return Secret(from_env, source=f"env:{API_KEY_ENV}")
    if api_key_file is not None:
        return read_key_file(api_key_file)
    env_file = env.get(API_KEY_FILE_ENV)
    if env_file:
        return read_key_file(env_file)
    default = default_key_file(env)
    if default.exists():
        return read_key_file(default)
    raise AuthError(
        "no Tinker API key found",
        hint=f'set {API_KEY_ENV}, or write `api_key = "tml-..."` to {default} '
        "(mode 0600), or pass the backend option api_key_file",
    )


def refused_key_hint(secret: Secret | None) -> str:
    """What to fix when a server refuses ``secret``: the setting it came from."""
    source = secret.source if secret is not None else ""
    if source.startswith("env:"):
        where = f"the key in ${source[4:]}"
        fix = f"set {source[4:]} to a key the server accepts"
    elif source.startswith("file:"):
        where = f"the key in {source[5:]}"
        fix = (
            f"put a key the server accepts in {source[5:]} (or point the backend option "
            f"api_key_file / ${API_KEY_FILE_ENV} at another file)"
        )
    elif source == "option":
        where = "the backend option api_key"
        fix = f"fix it, or drop it and set {API_KEY_ENV}"
    else:
        where = "the API key"
        fix = f"set {API_KEY_ENV} or the backend option api_key_file"
    return f"the server refused {where}: {fix}"


def redact(text: str, secrets: Iterable[Secret | str | None]) -> str:
    """``text`` with every secret replaced by ``***``."""
    out = text
    for s in secrets:
        if s is None:
            continue
        value = s.reveal() if isinstance(s, Secret) else s
        if len(value) >= 4:
            out = out.replace(value, _MASK)
    return out

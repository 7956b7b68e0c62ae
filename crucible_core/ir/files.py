"""Read a user's job or experiment file safely: bounded in time and memory.

Every CLI command that takes a document path (``plan``, ``train``, ``ir
validate``, ``jobs submit``...) reads it through :func:`read_document`, so a
wrong path fails the same way everywhere, with one line and exit status 2:

* the path is ``stat``-ed first; anything but a regular file (a directory, a
  named pipe, a device such as ``/dev/zero``, a socket) is refused without
  being opened, so a FIFO with no writer cannot hang the command;
* a file larger than the limit (:data:`MAX_DOCUMENT_BYTES` by default) is
  refused before a byte is read, so an 8 GB (even sparse) file costs nothing;
* the file is opened non-blocking, checked again through the open descriptor
  (the path may have been swapped meanwhile) and at most ``limit + 1`` bytes are
  read, which also bounds files whose size the kernel reports as 0 (``/proc``);
* an OS failure (permission denied, I/O error, name too long) becomes a
  :class:`~crucible_core.errors.ConfigError` that names the file and the OS
  reason; only a missing file is :class:`~crucible_core.errors.NotFound`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from crucible_core.errors import ConfigError, CrucibleError, NotFound

__all__ = ["MAX_DOCUMENT_BYTES", "read_document"]

#: Documents above this size are refused before parsing (a config is never this big).
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024

_CHUNK = 1024 * 1024
_HINT = "pass a regular .toml, .json or .msgpack file"


def read_document(path: str | Path, *, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Raises ``NotFound`` when nothing is at ``path`` and ``ConfigError`` for
    everything else that keeps it from being read (see the module docstring).
    """
    p = Path(path)
    try:
        info = os.stat(p)
    except OSError as exc:
        raise _os_error(p, exc) from None
    except ValueError as exc:  # an embedded NUL byte
        raise ConfigError(f"{_show(p)}: not a usable path ({exc})", hint=_HINT) from None
    _check(p, info, limit)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise _os_error(p, exc) from None
    try:
        _check(p, os.fstat(fd), limit)
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise _os_error(p, exc) from None
    finally:
        os.close(fd)
    if total > limit:
        raise _too_big(p, f"more than {limit} bytes", limit)
    return b"".join(chunks)


def _check(p: Path, info: os.stat_result, limit: int) -> None:
    mode = info.st_mode
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{_show(p)}: is {_kind(mode)}, not a file", hint=_HINT)
    if info.st_size > limit:
        raise _too_big(p, f"{info.st_size} bytes", limit)


def _too_big(p: Path, size: str, limit: int) -> ConfigError:
    return ConfigError(
        f"{_show(p)}: file is {size}; the limit is {limit}",
        hint="IR documents are configurations; keep data in dataset files",
    )


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _os_error(p: Path, exc: OSError) -> CrucibleError:
    if exc.errno == errno.ENOENT:
        return NotFound(f"{_show(p)}: no such file")
    reason = exc.strerror or type(exc).__name__
    hint = "check the file's permissions" if exc.errno in (errno.EACCES, errno.EPERM) else _HINT
    return ConfigError(f"{_show(p)}: cannot read ({reason})", hint=hint)


def _show(p: Path) -> str:
    # A path can be as long as the user typed it: keep the one-line message short.
    text = str(p)
    return text if len(text) <= 200 else text[:100] + "..." + text[-60:]

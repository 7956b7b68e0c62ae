"""A value derived from a file, derived again only when the file changed.

The status endpoints read what runs write while clients poll them (the
telemetry's tail, the newest loop state); re-reading and decoding those files
on every request cost more than the request. Files are told unchanged by
inode, size and mtime, one ``stat``: telemetry is append-only and the loop
state is replaced by rename, so either changes one of them on every write.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["StatCache"]

T = TypeVar("T")


class StatCache(Generic[T]):
    """``derive(path, stat, previous)`` per file, kept while the file's stat is unchanged.

    ``previous`` is the value derived from an earlier state of the same file
    (or None), for derivations that carry something over. At most
    ``max_files`` files are remembered (the oldest entry goes first). Values
    are shared between callers: do not modify them.
    """

    def __init__(
        self, derive: Callable[[str, os.stat_result, T | None], T], *, max_files: int = 4096
    ) -> None:
        self._derive = derive
        self.max_files = max_files
        self._known: dict[str, tuple[tuple[int, int, int], T]] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> T | None:
        """The value for ``path`` as it is now; None if there is no such file."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._known.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = self._derive(path, st, None if hit is None else hit[1])
        with self._lock:
            self._known.pop(path, None)  # re-inserted last: the newest entry
            self._known[path] = (key, value)
            while len(self._known) > self.max_files:
                del self._known[next(iter(self._known))]
        return value

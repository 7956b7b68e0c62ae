"""sha256 of served files, computed once per version of each file."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

__all__ = ["Sha256Cache"]


class Sha256Cache:
    """sha256 of files, remembered per (path, size, mtime) so downloads and listings
    hash a checkpoint once, not per request. Thread-safe."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def of(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._known.get(key)
        if hit is not None:
            return hit
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        with self._lock:
            self._known[key] = digest
        return digest

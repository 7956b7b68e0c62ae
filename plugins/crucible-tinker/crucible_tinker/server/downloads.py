"""Signed, expiring download URLs for a checkpoint's files (``external_weights_urls``).

``save_weights_external`` registers a checkpoint under
``tinker://<run>/external_weights/<name>``; the SDK then asks
``GET /api/v1/training_runs/<run>/checkpoints/external_weights/<name>/external_weights_urls``
(``RestClient.get_external_weights_urls``) and downloads each file from the URL
it is given, without its API key, as from a storage bucket's signed URL. Here
a URL is ``<base>/crucible/v1/files/<token>/<file>``: the token is random,
names one checkpoint directory and expires (default one hour); a file outside
that directory, an unknown token or an expired one is 404. The files are the
backend's own checkpoint directory as written (for crucible-local, a PEFT
adapter with its tokenizer).
"""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from crucible_core.errors import NotFound, UnsupportedError
from crucible_tinker.server.checkpoint_index import CheckpointIndex

__all__ = ["FILES_PREFIX", "URL_TTL_S", "Downloads"]

#: Where the signed URLs point under the server's base URL.
FILES_PREFIX = "/crucible/v1/files"
#: How long a signed URL stays valid.
URL_TTL_S = 3600.0


class Downloads:
    """Grants (token -> checkpoint directory, expiry); thread-safe."""

    def __init__(self, checkpoints: CheckpointIndex, *, ttl_s: float = URL_TTL_S) -> None:
        self.checkpoints = checkpoints
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._grants: dict[str, tuple[Path, float]] = {}

    def urls(self, run_id: str, checkpoint_id: str, base_url: str) -> dict[str, object]:
        """``{"urls": {file: url}, "expires": iso}`` for every file of the checkpoint
        ``tinker://<run_id>/<checkpoint_id>`` (NotFound when unknown)."""
        from crucible_core.records.artifacts import uri_path

        record = self.checkpoints.get(f"tinker://{run_id}/{checkpoint_id}")
        root = uri_path(record.ref.uri)
        if root is None or not root.is_dir():
            raise UnsupportedError(
                f"checkpoint tinker://{run_id}/{checkpoint_id} is not a local directory "
                f"({record.ref.uri}), so this server cannot hand out its files"
            )
        root = root.resolve()
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        token = secrets.token_urlsafe(24)
        expires = time.time() + self.ttl_s
        with self._lock:
            now = time.time()
            self._grants = {t: g for t, g in self._grants.items() if g[1] > now}
            self._grants[token] = (root, expires)
        base = base_url.rstrip("/")
        return {
            "urls": {f: f"{base}{FILES_PREFIX}/{token}/{quote(f)}" for f in files},
            "expires": datetime.fromtimestamp(expires, UTC).isoformat(),
        }

    def open(self, token: str, name: str) -> Path:
        """The file ``name`` of the grant ``token``; NotFound for an unknown or expired
        token or a name outside the checkpoint's directory."""
        with self._lock:
            grant = self._grants.get(token)
        if grant is None or grant[1] <= time.time():
            raise NotFound("unknown or expired download URL")
        root, _ = grant
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise NotFound(f"no file {name!r} in this checkpoint")
        return path

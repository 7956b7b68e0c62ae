"""The content-addressed artifact store and run manifests.

**Store.** :class:`LocalArtifactStore` (registered as artifact store
``local``) keeps files and directories by sha256 under
``$CRUCIBLE_HOME/artifacts/sha256/<2 hex>/<64 hex>``. A directory (a
checkpoint) is addressed by its *tree digest*: the sha256 of its sorted
``relative/path\\0<file sha256>\\n`` lines, so the same files give the same
digest wherever they live. Writes go to a temporary name in the store and
are renamed into place, so a reader never sees half an object; storing
content that is already there costs a hash and nothing else.

**Manifest.** ``runs/<job_id>/manifest.json`` records what a run was and what
it made; its schema and its only writer are in
:mod:`crucible_core.records.manifest`. This module reads it
(:func:`read_manifest`, as plain JSON) and verifies it: :func:`verify_run`
rehashes every listed file and reports the missing and the altered.

Supported surface: :class:`LocalArtifactStore`, :func:`read_manifest`,
:func:`verify_run`, :class:`VerifyReport`, :func:`digest_path`, :func:`tree_hashes`,
:func:`config_digest`, :func:`environment_info`, :func:`write_json`,
:data:`MANIFEST_FILE`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import secrets
import shutil
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

import msgspec

from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir.lineage import Artifact, ArtifactType
from crucible_core.records import paths

__all__ = [
    "MANIFEST_FILE",
    "LocalArtifactStore",
    "VerifyReport",
    "config_digest",
    "digest_path",
    "environment_info",
    "fsync_dir",
    "lock_for",
    "read_manifest",
    "tree_hashes",
    "uri_path",
    "verify_run",
    "write_json",
]

MANIFEST_FILE: Final = "manifest.json"
_CHUNK: Final = 1 << 20
_manifest_locks: dict[Path, threading.Lock] = {}
_manifest_locks_guard = threading.Lock()


# -- hashing -----------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _tree_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _tree_digest(files: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]}\n".encode())
    return h.hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by POSIX relative path."""
    return {f.relative_to(root).as_posix(): _sha256_file(f) for f in _tree_files(root)}


def digest_path(path: Path) -> tuple[str, int]:
    """(sha256, size in bytes) of a file, or of a directory by its tree digest."""
    if path.is_dir():
        files = tree_hashes(path)
        size = sum((path / rel).stat().st_size for rel in files)
        return _tree_digest(files), size
    return _sha256_file(path), path.stat().st_size


def config_digest(obj: Any) -> str:
    """sha256 of an IR value or plain data in canonical JSON (sorted keys)."""
    return hashlib.sha256(msgspec.json.encode(msgspec.to_builtins(obj, order="sorted"))).hexdigest()


def environment_info(host: Any | None = None) -> dict[str, Any]:
    """Python, crucible and platform versions, plus each loaded plugin's version if ``host``."""
    from crucible_core import __version__

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "crucible": __version__,
    }
    if host is not None:
        info["plugins"] = {
            p.name: p.version
            for p in host.plugins()
            if p.status in ("ok", "conflict") and not p.builtin  # conflict: partly in use
        }
    return info


# -- atomic files ------------------------------------------------------------


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort: not every platform can
    open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (before it is renamed into place)."""
    for f in _tree_files(root):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for dirpath, _dirs, _files in os.walk(root):
        fsync_dir(Path(dirpath))


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


# -- the store ---------------------------------------------------------------


class LocalArtifactStore:
    """Files and directories by sha256 under ``root`` (default ``$CRUCIBLE_HOME/artifacts``).

    Satisfies :class:`crucible_core.contracts.ArtifactStore`.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else paths.artifacts_dir()

    def _object(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ConfigError(
                f"{sha256!r} is not a sha256 digest", hint="give the 64 lowercase hex digits"
            )
        return self.root / "sha256" / sha256[:2] / sha256

    def put(
        self,
        path: Path,
        *,
        type: ArtifactType,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """Store the file or directory at ``path`` by content; return its Artifact."""
        source = Path(path)
        if not source.exists():
            raise NotFound(f"{source}: no such file or directory to store")
        staging = self.root / "tmp"
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / f"{os.getpid()}.{secrets.token_hex(6)}"
        try:
            if source.is_dir():
                shutil.copytree(source, tmp)
                _fsync_tree(tmp)
                sha, size = digest_path(tmp)
            else:
                sha, size = self._copy_hashing(source, tmp)
            final = self._object(sha)
            final.parent.mkdir(parents=True, exist_ok=True)
            if not final.exists():
                try:
                    os.rename(tmp, final)
                except OSError:
                    # Another writer stored the same content first: keep theirs.
                    if not final.exists():
                        raise
                fsync_dir(final.parent)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        meta: dict[str, Any] = {"source": str(source)}
        if name:
            meta["name"] = name
        if source.is_dir():
            meta["tree"] = True
        meta.update(metadata or {})
        return Artifact(
            artifact_id=f"sha256:{sha}",
            type=type,
            uri=final.resolve().as_uri(),
            size_bytes=size,
            sha256=sha,
            created_at=datetime.now(UTC),
            metadata=meta,
        )

    @staticmethod
    def _copy_hashing(source: Path, target: Path) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        with open(source, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                dst.write(chunk)
                size += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        return h.hexdigest(), size

    def path_of(self, sha256: str) -> Path:
        """Where the object ``sha256`` is; NotFound if the store does not have it."""
        obj = self._object(sha256)
        if not obj.exists():
            raise NotFound(
                f"the artifact store has no object sha256:{sha256}", hint=f"store root: {self.root}"
            )
        return obj

    def exists(self, sha256: str) -> bool:
        """Whether the store holds ``sha256``."""
        return self._object(sha256).exists()

    def clean_staging(self) -> list[Path]:
        """Remove staging copies (``tmp/<pid>.<hex>``) whose writing process is gone.

        A process killed inside :meth:`put` leaves its copy behind; other live
        writers' copies are left alone. POSIX only (elsewhere nothing is removed).
        """
        staging = self.root / "tmp"
        removed: list[Path] = []
        if os.name != "posix" or not staging.is_dir():
            return removed
        for entry in staging.iterdir():
            pid_text = entry.name.split(".", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == os.getpid() or _alive(int(pid_text)):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed.append(entry)
        return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or not a pid we may probe): leave it
    return True


# -- manifests ---------------------------------------------------------------


def lock_for(run: Path) -> threading.Lock:
    """The lock that serialises writes of one run's manifest within this process."""
    key = run.resolve()
    with _manifest_locks_guard:
        lock = _manifest_locks.get(key)
        if lock is None:
            lock = _manifest_locks[key] = threading.Lock()
        return lock


def read_manifest(run: Path) -> dict[str, Any]:
    """The manifest of the run directory ``run``; NotFound if it has none."""
    path = Path(run) / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(
            f"{path}: no manifest", hint="is this a run directory? runs live in $CRUCIBLE_HOME/runs"
        ) from None
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(
            f"{path}: the manifest is not valid JSON ({exc})",
            hint="it was edited or truncated by something other than crucible",
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the manifest is not a JSON object")
    return cast(dict[str, Any], data)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (temp file, fsync, rename, fsync dir)."""
    _atomic_write(Path(path), msgspec.json.format(msgspec.json.encode(data), indent=2) + b"\n")


def uri_path(uri: str) -> Path | None:
    """The local path a ``file://`` URI or plain path names; None for remote URIs."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    if "://" not in uri:
        return Path(uri)
    return None


# -- verification ------------------------------------------------------------


@dataclass
class AlteredFile:
    """A file whose content no longer matches the manifest."""

    path: str
    expected: str
    actual: str


@dataclass
class VerifyReport:
    """What :func:`verify_run` found: files checked, missing and altered."""

    run_dir: Path
    checked: list[str] = field(default_factory=list[str])
    missing: list[str] = field(default_factory=list[str])
    altered: list[AlteredFile] = field(default_factory=list[AlteredFile])
    unverifiable: list[str] = field(default_factory=list[str])

    @property
    def ok(self) -> bool:
        """True when nothing is missing or altered."""
        return not self.missing and not self.altered

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (what ``crucible artifacts verify --json`` prints)."""
        return {
            "run_dir": str(self.run_dir),
            "ok": self.ok,
            "checked": self.checked,
            "missing": self.missing,
            "altered": [a.__dict__ for a in self.altered],
            "unverifiable": self.unverifiable,
        }


def verify_run(run: Path, *, uri: str | None = None) -> VerifyReport:
    """Recompute the sha256 of every artifact the run's manifest lists and compare.

    ``uri`` restricts the check to the artifacts recorded with that URI (one
    checkpoint); a URI the manifest does not list gives an empty report.
    """
    run = Path(run)
    data = read_manifest(run)
    report = VerifyReport(run_dir=run)
    for raw in cast(list[Any], data.get("artifacts") or []):
        if not isinstance(raw, dict):
            continue
        entry = cast(dict[str, Any], raw)
        if uri is not None and entry.get("uri") != uri:
            continue
        _verify_entry(report, run, entry)
    return report


def _verify_entry(report: VerifyReport, run: Path, entry: dict[str, Any]) -> None:
    rel = entry.get("path")
    expected = entry.get("sha256")
    label = str(rel or entry.get("artifact_id") or "?")
    if not isinstance(rel, str) or not isinstance(expected, str):
        report.unverifiable.append(label)
        return
    target = Path(rel) if Path(rel).is_absolute() else run / rel
    files = entry.get("files")
    if isinstance(files, dict):
        _verify_tree(report, target, rel, expected, cast(dict[str, str], files))
    elif not target.is_file():
        report.missing.append(rel)
    else:
        actual = _sha256_file(target)
        if actual != expected:
            report.altered.append(AlteredFile(rel, expected, actual))
        else:
            report.checked.append(rel)


def _verify_tree(
    report: VerifyReport, target: Path, rel: str, expected: str, files: dict[str, str]
) -> None:
    if not target.is_dir():
        report.missing.append(rel)
        return
    for name, sha in sorted(files.items()):
        f = target / name
        label = f"{rel}/{name}"
        if not f.is_file():
            report.missing.append(label)
            continue
        actual = _sha256_file(f)
        if actual != sha:
            report.altered.append(AlteredFile(label, sha, actual))
        else:
            report.checked.append(label)
    present = tree_hashes(target)
    for extra in sorted(set(present) - set(files)):
        report.altered.append(AlteredFile(f"{rel}/{extra}", "(absent)", present[extra]))
    if _tree_digest(files) != expected:
        report.altered.append(AlteredFile(rel, expected, _tree_digest(files)))

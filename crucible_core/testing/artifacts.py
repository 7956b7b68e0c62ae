"""``check_artifact_store``: an ArtifactStore keeps files and directories by content.

What it asserts (each failure names the call and the rule):

1. The object has ``put``, ``path_of`` and ``exists``
   (:class:`~crucible_core.contracts.ArtifactStore`).
2. ``put(file, type=, name=, metadata=)`` returns an
   :class:`~crucible_core.ir.Artifact` whose ``sha256`` is the file's sha256,
   ``size_bytes`` its size, ``type`` the one given, and whose metadata keeps
   what was passed (the pipeline records the stage there).
3. ``exists(sha256)`` is true and ``path_of(sha256)`` holds the same bytes,
   even after the source file is changed (the store copies, never links).
4. The same content stored from another path has the same ``sha256`` and
   ``artifact_id``.
5. A directory (a checkpoint) is addressed by its tree digest
   (:func:`crucible_core.records.artifacts.digest_path`, the digest run
   manifests record), and ``path_of`` gives a directory with the same files.
6. An unknown digest: ``exists`` is false and ``path_of`` raises
   :class:`~crucible_core.errors.NotFound`; storing a path that does not
   exist raises ``NotFound``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from crucible_core.contracts import ArtifactStore
from crucible_core.errors import NotFound
from crucible_core.ir.lineage import Artifact
from crucible_core.records.artifacts import digest_path, tree_hashes
from crucible_core.testing._guard import Calls, ConformanceError, require

__all__ = ["check_artifact_store"]

_CONTENT = b"crucible conformance kit\n" * 64


def _put(calls: Calls, store: Any, path: Path, call: str, **kwargs: Any) -> Artifact:
    artifact = calls(call, "put stores a path by content", store.put, path, **kwargs)
    require(
        isinstance(artifact, Artifact),
        f"{call} must return crucible_core.ir.Artifact, got {type(artifact).__name__}",
    )
    return artifact


def check_artifact_store(store: Any, workdir: Path, *, timeout: float = 120.0) -> None:
    """Store files and a directory made under ``workdir`` and check the rules.

    ``workdir`` is an empty scratch directory (pytest's ``tmp_path``) outside
    the store; ``timeout`` bounds every call in seconds.
    """
    require(
        isinstance(store, ArtifactStore),
        "an artifact store needs put, path_of and exists (crucible_core.contracts.ArtifactStore)",
    )
    work = Path(workdir)
    source = work / "a" / "report.txt"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(_CONTENT)
    sha = hashlib.sha256(_CONTENT).hexdigest()
    with Calls(timeout) as calls:
        call = "put(file, type='report', name='conformance', metadata={'kit': 1})"
        art = _put(
            calls, store, source, call, type="report", name="conformance", metadata={"kit": 1}
        )
        require(art.sha256 == sha, f"{call}: sha256 must be the file's ({sha}), got {art.sha256}")
        require(
            art.size_bytes == len(_CONTENT),
            f"{call}: size_bytes must be {len(_CONTENT)}, got {art.size_bytes}",
        )
        require(art.type == "report", f"{call}: type must be 'report', got {art.type!r}")
        require(
            art.metadata.get("kit") == 1,
            f"{call}: the metadata passed to put must be kept in Artifact.metadata, "
            f"got {art.metadata!r}",
        )
        found = calls(f"exists({sha[:12]}...)", "a stored digest exists", store.exists, sha)
        require(found is True, "exists() must be True for the sha256 put just returned")
        source.write_bytes(b"changed after put\n")
        stored = Path(calls("path_of(sha256)", "path_of finds a stored file", store.path_of, sha))
        require(
            stored.is_file() and stored.read_bytes() == _CONTENT,
            f"path_of({sha[:12]}...) must hold the bytes that were put, even after the source "
            "changed (copy into the store, never link)",
        )
        twin = work / "b" / "elsewhere.bin"
        twin.parent.mkdir(parents=True, exist_ok=True)
        twin.write_bytes(_CONTENT)
        again = _put(calls, store, twin, "put(same content, other path)", type="report")
        require(
            again.sha256 == sha and again.artifact_id == art.artifact_id,
            "the same content stored from another path must get the same sha256 and "
            f"artifact_id: {art.artifact_id} then {again.artifact_id}",
        )
        _check_directory(calls, store, work)
        _check_unknown(calls, store, work)


def _check_directory(calls: Calls, store: Any, work: Path) -> None:
    tree = work / "checkpoint"
    (tree / "sub").mkdir(parents=True, exist_ok=True)
    (tree / "weights.bin").write_bytes(_CONTENT)
    (tree / "sub" / "config.json").write_text('{"step": 1}\n')
    want, _ = digest_path(tree)
    call = "put(directory, type='checkpoint')"
    art = _put(calls, store, tree, call, type="checkpoint")
    require(
        art.sha256 == want,
        f"{call}: a directory is addressed by its tree digest {want} "
        f"(crucible_core.records.artifacts.digest_path), got {art.sha256}",
    )
    stored = Path(calls("path_of(tree digest)", "path_of finds a directory", store.path_of, want))
    require(
        stored.is_dir() and tree_hashes(stored) == tree_hashes(tree),
        f"path_of({want[:12]}...) must be a directory holding the same files",
    )


def _check_unknown(calls: Calls, store: Any, work: Path) -> None:
    unknown = hashlib.sha256(b"never stored by the conformance kit").hexdigest()
    require(
        calls("exists(unknown)", "an unknown digest does not exist", store.exists, unknown)
        is False,
        "exists() must be False for a digest that was never stored",
    )

    def put_missing(path: Path) -> Any:
        return store.put(path, type="report")

    checks: list[tuple[str, Any, Any]] = [
        ("path_of(unknown)", store.path_of, unknown),
        ("put(missing path)", put_missing, work / "no-such-file"),
    ]
    for call, fn, arg in checks:
        _, exc = calls.attempt(call, "a missing object is NotFound", fn, arg)
        if not isinstance(exc, NotFound):
            what = "returned" if exc is None else f"raised {type(exc).__name__}: {exc}"
            raise ConformanceError(
                f"{call} {what}; it must raise crucible_core.errors.NotFound"
            ) from exc

"""check_artifact_store passes the local store and names the rule each broken one breaks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from crucible_core.errors import NotFound
from crucible_core.ir import Artifact
from crucible_core.ir.lineage import ArtifactType
from crucible_core.records.artifacts import LocalArtifactStore
from crucible_core.testing import ConformanceError, check_artifact_store


def test_the_local_store_passes(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    check_artifact_store(LocalArtifactStore(tmp_path / "store"), tmp_path / "work")


class _Wrapped:
    """The local store with one rule broken by a subclass."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalArtifactStore(root)

    def put(
        self,
        path: Path,
        *,
        type: ArtifactType,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Artifact:
        return self.inner.put(path, type=type, name=name, metadata=metadata)

    def path_of(self, sha256: str) -> Path:
        return self.inner.path_of(sha256)

    def exists(self, sha256: str) -> bool:
        return self.inner.exists(sha256)


class _WrongDigest(_Wrapped):
    def put(self, path: Path, **kwargs: Any) -> Artifact:
        art = super().put(path, **kwargs)
        return art.__replace__(sha256=hashlib.sha256(str(path).encode()).hexdigest())  # type: ignore[attr-defined]


class _DropsMetadata(_Wrapped):
    def put(self, path: Path, **kwargs: Any) -> Artifact:
        kwargs.pop("metadata", None)
        return super().put(path, **kwargs)


class _Links(_Wrapped):
    """Keeps a link to the source instead of a copy."""

    def put(self, path: Path, **kwargs: Any) -> Artifact:
        art = super().put(path, **kwargs)
        if Path(path).is_file():
            obj = self.inner.path_of(str(art.sha256))
            obj.unlink()
            os.symlink(Path(path).resolve(), obj)
        return art


class _IdByPath(_Wrapped):
    def put(self, path: Path, **kwargs: Any) -> Artifact:
        art = super().put(path, **kwargs)
        return art.__replace__(artifact_id=f"path:{path}")  # type: ignore[attr-defined]


class _OwnTreeDigest(_Wrapped):
    def put(self, path: Path, **kwargs: Any) -> Artifact:
        art = super().put(path, **kwargs)
        if Path(path).is_dir():
            return art.__replace__(sha256="0" * 64)  # type: ignore[attr-defined]
        return art


class _SaysYes(_Wrapped):
    def exists(self, sha256: str) -> bool:
        return True


class _UntypedMissing(_Wrapped):
    def path_of(self, sha256: str) -> Path:
        try:
            return super().path_of(sha256)
        except NotFound:
            raise FileNotFoundError(sha256) from None


class _StoresNothing(_Wrapped):
    def put(self, path: Path, **kwargs: Any) -> Artifact:
        if not Path(path).exists():
            return Artifact(artifact_id="sha256:none", type="report", uri="file:///dev/null")
        return super().put(path, **kwargs)


@pytest.mark.parametrize(
    ("store", "message"),
    [
        (_WrongDigest, "sha256 must be the file's"),
        (_DropsMetadata, "metadata passed to put must be kept"),
        (_Links, "even after the source changed \\(copy into the store, never link\\)"),
        (_IdByPath, "same content stored from another path must get the same sha256"),
        (_OwnTreeDigest, "a directory is addressed by its tree digest"),
        (_SaysYes, "exists\\(\\) must be False for a digest that was never stored"),
        (_UntypedMissing, "path_of\\(unknown\\) raised FileNotFoundError.*must raise .*NotFound"),
        (_StoresNothing, "put\\(missing path\\) returned; it must raise"),
    ],
)
def test_broken_stores_fail_with_the_rule(tmp_path: Path, store: Any, message: str) -> None:
    (tmp_path / "work").mkdir()
    with pytest.raises(ConformanceError, match=message):
        check_artifact_store(store(tmp_path / "store"), tmp_path / "work")


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(ConformanceError, match="an artifact store needs put, path_of and exists"):
        check_artifact_store(object(), tmp_path)

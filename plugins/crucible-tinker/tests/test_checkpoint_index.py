"""The server's checkpoint index is written durably: temporary file, fsync, ``os.replace``,
fsync of the directory; a write that fails leaves the previous index whole and nothing
behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from crucible_tinker.server.checkpoint_index import (
    INDEX_FILE,
    CheckpointIndex,
    CheckpointRecord,
    load_index,
)

from crucible_core.ir.backend import CheckpointRef

MODEL = "sess-0123:train:0"
LORA = {"rank": 4, "train_mlp": True, "train_attn": True, "train_unembed": True}


def _record(name: str, **lora: object) -> CheckpointRecord:
    uri = f"tinker://{MODEL}/weights/{name}"
    ref = CheckpointRef(uri=f"local://ckpt/{name}", kind="state", step=3, name=name)
    return CheckpointRecord(uri, ref, "tiny-llama", {**LORA, **lora})


def test_index_round_trips_across_instances(tmp_path: Path) -> None:
    index = CheckpointIndex(tmp_path)
    index.register(_record("a"))
    index.register(_record("b"))
    again = CheckpointIndex(tmp_path)
    assert again.uris() == index.uris() == sorted(index.uris())
    got = again.get(f"tinker://{MODEL}/weights/a")
    assert got.ref.uri == "local://ckpt/a"
    assert got.ref.step == 3
    assert got.lora == LORA
    assert got.base_model == "tiny-llama"


def test_index_write_is_fsynced_and_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``os.fsync`` and ``os.replace`` are wrapped (not replaced: the real calls run) to
    record what was synced and renamed."""
    synced: list[str] = []
    renamed: list[tuple[Path, Path]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renamed.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    CheckpointIndex(tmp_path).register(_record("a"))
    index_file = tmp_path / INDEX_FILE
    assert len(renamed) == 1
    src, dst = renamed[0]
    assert dst == index_file
    assert src.parent == tmp_path  # a temporary beside it
    assert src != index_file
    # The file's data before the rename, the directory entry after it.
    assert synced.index("file") < synced.index("dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_FILE]


def test_failed_write_leaves_the_previous_index(tmp_path: Path) -> None:
    """A crash mid-write, simulated by a real failing write: a child process lowers its
    file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) below the size of the new index, so
    the write of the temporary file fails with EFBIG after part of it was written."""
    code = textwrap.dedent(
        f"""
        import errno, resource, signal, sys
        from pathlib import Path
        sys.path[:0] = {[str(Path(__file__).parent)]!r}
        from test_checkpoint_index import _record
        from crucible_tinker.server.checkpoint_index import CheckpointIndex, INDEX_FILE

        state = Path({str(tmp_path)!r})
        index = CheckpointIndex(state)
        index.register(_record("first"))
        size = (state / INDEX_FILE).stat().st_size
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 256, resource.RLIM_INFINITY))
        try:
            index.register(_record("second", note="x" * 100_000))
        except OSError as exc:
            assert exc.errno == errno.EFBIG, exc
            assert index.uris() == [_record("first").uri], index.uris()
            print("write failed")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "write failed"
    # The previous index is whole, and the half-written temporary is gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_FILE]
    records = load_index(tmp_path / INDEX_FILE)
    assert list(records) == [_record("first").uri]
    assert CheckpointIndex(tmp_path).uris() == [_record("first").uri]


def test_get_names_a_bad_or_unknown_path(tmp_path: Path) -> None:
    from crucible_core.errors import ConfigError, NotFound

    index = CheckpointIndex(None)
    with pytest.raises(ConfigError, match="tinker://"):
        index.get("s3://elsewhere/x")
    with pytest.raises(NotFound, match="no checkpoint"):
        index.get(f"tinker://{MODEL}/weights/missing")
    index.register(_record("a"))
    assert list(tmp_path.iterdir()) == []  # no state_dir: nothing written

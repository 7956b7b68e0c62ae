"""crucible_core.export: the atomic write, the output-directory rules and the record, with a
small in-test backend that writes real files (no model needed)."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from crucible_core.errors import ConfigError, UnsupportedError
from crucible_core.export import check_out, export_checkpoint, exporting
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.training import ModelSpec


class FileBackend:
    """Writes ``weights.bin`` (and, with ``fail_after``, raises once that much is written)."""

    export_formats = ("merged",)

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail

    def export(
        self, model: ModelSpec, checkpoint: CheckpointRef, fmt: str, out: Path, *, final: Path
    ) -> dict[str, Any]:
        (out / "weights.bin").write_bytes(b"\x00" * 4096)
        if self.fail is not None:
            raise self.fail
        (out / "config.json").write_text("{}")
        return {"base": None, "load_code": 'load("{out}")\n'}

    def verify_export(
        self, model: ModelSpec, checkpoint: CheckpointRef, fmt: str, out: Path
    ) -> dict[str, Any]:
        return {"ok": False, "max_abs_diff": 0.5, "tolerance": 1e-3, "probes": 3, "loader": "x"}


def _run(home: Path) -> tuple[Path, dict[str, Any]]:
    run = home / "runs" / "r1"
    (run / "checkpoints" / "final").mkdir(parents=True)
    manifest = {"job_id": "r1", "model": {"name": "m"}, "training": {"final_loss": 1.5}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run, manifest


def _ref(run: Path) -> CheckpointRef:
    return CheckpointRef(uri=(run / "checkpoints" / "final").as_uri(), kind="sampler")


def test_a_disk_full_export_leaves_nothing_under_either_name(
    crucible_home: Path, tmp_path: Path
) -> None:
    """ENOSPC is simulated (raised by the backend after writing a file): a full disk cannot
    be caused safely on a shared machine."""
    run, manifest = _run(crucible_home)
    out = tmp_path / "exports" / "out"
    backend = FileBackend(fail=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        export_checkpoint(backend, run, manifest, ModelSpec(name="m"), _ref(run), "merged", out)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_an_export_is_renamed_into_place_with_a_card_and_recorded(
    crucible_home: Path, tmp_path: Path
) -> None:
    run, manifest = _run(crucible_home)
    out = tmp_path / "exports" / "out"
    done = export_checkpoint(
        FileBackend(), run, manifest, ModelSpec(name="m"), _ref(run), "merged", out, verify=True
    )
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "weights.bin"]
    assert f'load("{out}")' in (out / "README.md").read_text()
    assert [p.name for p in out.parent.iterdir()] == ["out"]
    assert done.verification is not None
    assert done.verification["ok"] is False
    recorded = json.loads((run / "manifest.json").read_text())["exports"]
    assert recorded[0]["path"] == str(out)
    assert recorded[0]["verification"]["ok"] is False
    assert set(recorded[0]["files"]) == {"README.md", "config.json", "weights.bin"}


def test_a_non_empty_out_needs_force_and_force_replaces_it(
    crucible_home: Path, tmp_path: Path
) -> None:
    run, manifest = _run(crucible_home)
    out = tmp_path / "exports" / "out"
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not empty") as err:
        export_checkpoint(
            FileBackend(), run, manifest, ModelSpec(name="m"), _ref(run), "merged", out
        )
    assert "--force" in (err.value.hint or "")
    assert (out / "mine.txt").read_text() == "keep"
    export_checkpoint(
        FileBackend(), run, manifest, ModelSpec(name="m"), _ref(run), "merged", out, force=True
    )
    assert not (out / "mine.txt").exists()
    assert (out / "weights.bin").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["out"]
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        check_out(file, True)


def test_exporting_names_what_a_backend_writes() -> None:
    with pytest.raises(UnsupportedError, match="cannot export weights"):
        exporting(object(), "toy", "merged")
    with pytest.raises(
        UnsupportedError, match="--format gguf: backend 'files' does not write"
    ) as err:
        exporting(FileBackend(), "files", "gguf")
    assert err.value.hint == "formats it writes: merged"

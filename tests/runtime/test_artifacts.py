"""The content-addressed store, atomic manifests and tamper detection."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from crucible_core.contracts import ArtifactStore
from crucible_core.errors import ConfigError, NotFound
from crucible_core.records.artifacts import (
    LocalArtifactStore,
    config_digest,
    read_manifest,
    verify_run,
)
from crucible_core.records.manifest import RunRecord


def make_checkpoint(root: Path) -> Path:
    ckpt = root / "checkpoints" / "10"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "weights.bin").write_bytes(os.urandom(4096))
    (ckpt / "sub" / "state.json").write_text('{"step": 10}')
    return ckpt


def test_store_satisfies_the_contract(tmp_path: Path) -> None:
    assert isinstance(LocalArtifactStore(tmp_path), ArtifactStore)


def test_put_file_is_content_addressed(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    src = tmp_path / "data.txt"
    src.write_bytes(b"hello")
    a = store.put(src, type="dataset", name="greeting")
    sha = hashlib.sha256(b"hello").hexdigest()
    assert a.sha256 == sha
    assert a.artifact_id == f"sha256:{sha}"
    assert a.size_bytes == 5
    assert a.metadata["name"] == "greeting"
    assert store.exists(sha)
    assert store.path_of(sha).read_bytes() == b"hello"
    again = store.put(src, type="dataset")
    assert again.sha256 == sha
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_put_directory_by_tree_digest(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    one = make_checkpoint(tmp_path / "a")
    two = tmp_path / "b"
    import shutil

    shutil.copytree(one, two)
    a1 = store.put(one, type="checkpoint")
    a2 = store.put(two, type="checkpoint")
    assert a1.sha256 == a2.sha256
    assert (store.path_of(a1.sha256 or "") / "sub" / "state.json").read_text() == '{"step": 10}'
    (two / "weights.bin").write_bytes(b"changed")
    assert store.put(two, type="checkpoint").sha256 != a1.sha256


def test_unknown_and_malformed_digests(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(NotFound):
        store.path_of("0" * 64)
    with pytest.raises(ConfigError, match="not a sha256"):
        store.exists("../../etc/passwd")
    with pytest.raises(NotFound):
        store.put(tmp_path / "nope", type="log")


def test_manifest_write_update_read(tmp_path: Path) -> None:
    run = tmp_path / "run"
    RunRecord(run).update(config_digest=config_digest({"b": 1, "a": 2}), seed=7)
    RunRecord(run).update(dataset={"uri": "d.jsonl", "hash": "abc"}, seed=8)
    m = read_manifest(run)
    assert m["seed"] == 8
    assert m["dataset"] == {"uri": "d.jsonl", "hash": "abc"}
    assert m["config_digest"] == config_digest({"a": 2, "b": 1})
    assert m["environment"]["python"]
    assert m["created_at"] <= m["updated_at"]
    assert [p.name for p in run.iterdir()] == ["manifest.json"]


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_verify_detects_missing_and_altered_files(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    run = tmp_path / "run"
    ckpt = make_checkpoint(run)
    report_file = run / "report.md"
    report_file.write_text("# fine")
    log = run / "log.txt"
    log.write_text("line")
    for path, kind in ((ckpt, "checkpoint"), (report_file, "report"), (log, "log")):
        RunRecord(run).record_artifact(store.put(path, type=kind), path=path)  # type: ignore[arg-type]
    assert verify_run(run).ok
    assert len(verify_run(run).checked) == 4
    entries = read_manifest(run)["artifacts"]
    assert entries[0]["path"] == "checkpoints/10"
    assert set(entries[0]["files"]) == {"weights.bin", "sub/state.json"}

    report_file.write_text("# tampered")
    log.unlink()
    (ckpt / "sub" / "state.json").write_text('{"step": 11}')
    (ckpt / "extra.bin").write_bytes(b"x")
    report = verify_run(run)
    assert not report.ok
    assert report.missing == ["log.txt"]
    altered = sorted(a.path for a in report.altered)
    assert altered == ["checkpoints/10/extra.bin", "checkpoints/10/sub/state.json", "report.md"]
    as_dict = report.to_dict()
    assert as_dict["ok"] is False
    assert as_dict["missing"] == ["log.txt"]


def test_record_artifact_replaces_same_path(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    run = tmp_path / "run"
    run.mkdir()
    f = run / "metrics.json"
    f.write_text("1")
    RunRecord(run).record_artifact(store.put(f, type="metrics"), path=f)
    f.write_text("2")
    RunRecord(run).record_artifact(store.put(f, type="metrics"), path=f)
    assert len(read_manifest(run)["artifacts"]) == 1
    assert verify_run(run).ok


def test_a_manifest_write_outside_the_schema_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    record = RunRecord(tmp_path)
    record.update(seed=1, status="running")
    before = (tmp_path / "manifest.json").read_bytes()
    with pytest.raises(TypeError, match="not manifest fields"):
        record.update(sede=2)
    with pytest.raises(TypeError, match="does not match the schema"):
        record.update(status="exploded")
    with pytest.raises(TypeError, match="does not match the schema"):
        record.update(seed="seven")
    assert (tmp_path / "manifest.json").read_bytes() == before
    assert record.read().seed == 1


def test_the_published_manifest_schema_matches_the_struct() -> None:
    import json

    from crucible_core.ir.codec import schema
    from crucible_core.records.manifest import RunManifest

    root = Path(__file__).resolve().parents[2]
    published = json.loads((root / "ir_schemas" / "RunManifest.schema.json").read_text())
    assert published == json.loads(json.dumps(schema(RunManifest)))
    assert {"status", "dataset", "checkpoints", "training"} <= set(
        published["$defs"]["RunManifest"]["properties"]
    )

"""Exporting a run's checkpoint: what ``crucible export`` and a run's final export share.

The writing is the run's backend's (the optional
:class:`~crucible_core.contracts.ExportingBackend` methods); this module owns
what every backend's export shares:

- **atomicity** (:func:`export_checkpoint`): the backend writes into
  ``.DIR.export-<pid>-<hex>`` beside ``DIR``, which is renamed into place only
  when complete (with ``force`` the previous ``DIR`` is moved aside first and
  removed after), so a killed export never leaves a half-written ``DIR``;
  leftovers of dead processes are removed by the next export to the same place;
- **the model card** (``README.md``): run id, dataset hash, metrics and the
  exact code that loads the export;
- **the record**: an :class:`~crucible_core.records.manifest.ExportRecord` in
  the run's manifest (sha256 of every file, the verification when asked) and,
  in lineage, the export as an artifact that was ``exported_from`` its
  checkpoint and that the run ``produces``.

``crucible export`` (:mod:`crucible_core.cli.export_cmd`) calls it for a
finished run; a run whose ``checkpoint_policy.format`` is an export format
(``gguf``, ``onnx``) calls it for its final checkpoint
(:func:`crucible_core.train.steps.export_final`).
"""

from __future__ import annotations

import difflib
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.errors import ConfigError, UnsupportedError
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.training import ModelSpec

__all__ = [
    "FINAL_EXPORT_FORMATS",
    "FORMATS",
    "Exported",
    "check_out",
    "export_checkpoint",
    "exporting",
    "list_checkpoints",
    "model_card",
    "resolve_checkpoint",
]

#: Every export format Crucible knows; a backend writes the subset it declares.
FORMATS: tuple[str, ...] = ("peft", "merged", "safetensors-full", "gguf", "onnx")
#: ``checkpoint_policy.format`` values that are export formats: a backend that exports
#: them (``export_formats`` in its capabilities' metadata) writes its usual checkpoints,
#: and the run exports its final weights in that format to ``<run>/exports/<format>``.
FINAL_EXPORT_FORMATS: tuple[str, ...] = ("gguf", "onnx")


@dataclass(frozen=True)
class Exported:
    """What :func:`export_checkpoint` did: the manifest record and the verification."""

    record: Any
    verification: Mapping[str, Any] | None


def exporting(backend: Any, backend_name: str, fmt: str) -> Any:
    """``backend`` if it can export ``fmt`` (it has the ExportingBackend methods and lists
    ``fmt`` in ``export_formats``), else UnsupportedError naming what it writes."""
    formats = cast(tuple[str, ...], getattr(backend, "export_formats", ()))
    if not formats or not hasattr(backend, "export"):
        raise UnsupportedError(
            f"backend {backend_name!r} cannot export weights",
            hint="export needs a backend with an export method (crucible-local has one)",
        )
    if fmt not in formats:
        raise UnsupportedError(
            f"--format {fmt}: backend {backend_name!r} does not write it",
            hint=f"formats it writes: {', '.join(formats)}",
        )
    return backend


def list_checkpoints(run_dir: Path) -> list[str]:
    """The checkpoint ids of a run: the directories under ``checkpoints/``, sorted."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def resolve_checkpoint(
    run_dir: Path, manifest: Mapping[str, Any], ident: str | None
) -> CheckpointRef:
    """The checkpoint ``ident`` names in the run (default: the run's final sampler weights).

    An unknown id is a usage error listing the closest ids.
    """
    from crucible_core.ir.codec import convert

    if ident is None:
        raw = manifest.get("sampler_checkpoint") or manifest.get("last_checkpoint")
        if raw is None:
            raise ConfigError(
                f"run {run_dir.name} has no saved weights (it did not finish)",
                hint="pick a checkpoint with --checkpoint ID, or resume the run first; its "
                f"checkpoints: {', '.join(list_checkpoints(run_dir)) or 'none'}",
            )
        return convert(raw, CheckpointRef)
    known = list_checkpoints(run_dir)
    if ident not in known:
        close = difflib.get_close_matches(ident, known, n=3, cutoff=0.3)
        raise ConfigError(
            f"--checkpoint {ident!r}: run {run_dir.name} has no such checkpoint",
            hint=(f"closest: {', '.join(close)}; " if close else "")
            + f"its checkpoints: {', '.join(known) or 'none'}",
        )
    return CheckpointRef(uri=(run_dir / "checkpoints" / ident).resolve().as_uri(), kind="sampler")


def check_out(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, or a non-empty directory unless ``force``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory", hint="choose another path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(
            f"--out {out}: directory is not empty",
            hint="choose an empty or new directory, or pass --force to replace it",
        )


def _clean_leftovers(out: Path) -> None:
    """Remove temporary directories that dead export processes left beside ``out``."""
    for left in out.parent.glob(f".{out.name}.export-*"):
        pid = left.name.rsplit(".export-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _swap_into_place(tmp: Path, out: Path) -> None:
    old: Path | None = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def model_card(
    run_dir: Path, manifest: Mapping[str, Any], fmt: str, result: Mapping[str, Any], out: Path
) -> str:
    """The export's ``README.md``: what it is, where it came from, how to load it."""
    dataset = cast(dict[str, Any], manifest.get("dataset") or {})
    training = cast(dict[str, Any], manifest.get("training") or {})
    model = cast(dict[str, Any], manifest.get("model") or {})
    metrics = {
        k: training[k] for k in ("initial_loss", "final_loss", "steps", "tokens") if k in training
    }
    evaluation: Any = training.get("evaluation") or {}
    lines = [
        "---",
        "library_name: " + ("peft" if fmt == "peft" else "transformers"),
        f"base_model: {result.get('base') or model.get('name', '')}",
        "tags: [crucible]",
        "---",
        "",
        f"# {run_dir.name} ({fmt})",
        "",
        f"Exported by `crucible export {run_dir.name} --format {fmt}` from run "
        f"`{manifest.get('job_id') or run_dir.name}`.",
        "",
        f"- base model: `{model.get('name', '?')}`"
        + (f" at revision `{model['revision']}`" if model.get("revision") else ""),
        f"- dataset: `{dataset.get('uri', '?')}` (hash `{dataset.get('hash', '?')}`, "
        f"{dataset.get('rows', '?')} rows)",
        f"- metrics: {', '.join(f'{k} {v}' for k, v in metrics.items()) or 'none recorded'}",
    ]
    if isinstance(evaluation, dict) and evaluation:
        flat = {k: v for k, v in cast(dict[str, Any], evaluation).items() if isinstance(v, float)}
        if flat:
            lines.append(f"- evaluation: {', '.join(f'{k} {v:.4g}' for k, v in flat.items())}")
    code = str(result.get("load_code", "")).replace("{out}", str(out))
    lines += ["", "## Load it", "", "```python", code.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def _record(
    run_dir: Path,
    fmt: str,
    out: Path,
    checkpoint: CheckpointRef,
    manifest: Mapping[str, Any],
    result: Mapping[str, Any],
    verification: Mapping[str, Any] | None,
) -> Any:
    from crucible_core.ir.lineage import Artifact, Edge
    from crucible_core.records.artifacts import digest_path, tree_hashes
    from crucible_core.records.lineage import LineageRecorder
    from crucible_core.records.manifest import ExportRecord, RunRecord

    digest, size = digest_path(out)
    artifact_id = f"sha256:{digest}"
    record = msgspec.convert(
        {
            "format": fmt,
            "path": str(out),
            "checkpoint": checkpoint.uri,
            "created_at": datetime.now(UTC).isoformat(),
            "artifact_id": artifact_id,
            "files": tree_hashes(out),
            "base": result.get("base"),
            "verification": dict(verification) if verification is not None else None,
        },
        ExportRecord,
    )
    RunRecord(run_dir).record_export(record)
    source = f"checkpoint:{checkpoint.uri}"
    checkpoint_path = checkpoint.uri.removeprefix("file://")
    for entry in cast(list[dict[str, Any]], manifest.get("artifacts") or []):
        where = entry.get("path")
        if where and (run_dir / where).resolve() == Path(checkpoint_path).resolve():
            source = str(entry["artifact_id"])
    artifact = Artifact(
        artifact_id=artifact_id,
        type="adapter" if fmt == "peft" else "model",
        uri=out.resolve().as_uri(),
        size_bytes=size,
        sha256=digest,
        metadata={"name": f"export-{fmt}", "format": fmt},
    )
    run_node = str(manifest.get("job_id") or run_dir.name)
    with LineageRecorder() as recorder:
        recorder.record_artifact(artifact)
        recorder.add_edges(
            [
                Edge(src=artifact_id, dst=source, kind="exported_from", metadata={"format": fmt}),
                Edge(src=run_node, dst=artifact_id, kind="produces"),
            ]
        )
    return record


def export_checkpoint(
    backend: Any,
    run_dir: Path,
    manifest: Mapping[str, Any],
    model: ModelSpec,
    checkpoint: CheckpointRef,
    fmt: str,
    out: Path,
    *,
    force: bool = False,
    verify: bool = False,
) -> Exported:
    """Export ``checkpoint`` of the run in ``run_dir`` as ``fmt`` to ``out``, atomically,
    with its model card; verify it when asked; record it in the manifest and lineage.

    ``backend`` must be able to export ``fmt`` (see :func:`exporting`). A
    failed verification is recorded (``ok`` false) and returned, not raised.
    """
    check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        result = dict(backend.export(model, checkpoint, fmt, tmp, final=out))
        (tmp / "README.md").write_text(model_card(run_dir, manifest, fmt, result, out))
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    verification: Mapping[str, Any] | None = None
    if verify:
        verification = dict(backend.verify_export(model, checkpoint, fmt, out))
    record = _record(run_dir, fmt, out, checkpoint, manifest, result, verification)
    return Exported(record=record, verification=verification)

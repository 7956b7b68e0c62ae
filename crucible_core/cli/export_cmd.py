"""``crucible export RUN --format F --out DIR``: a run's weights as files other tools load.

The command is thin: it resolves the run and the checkpoint, checks the
output directory, and hands the writing to the run's backend through the
optional :class:`~crucible_core.contracts.ExportingBackend` methods. What it
owns is what every backend's export shares:

- **atomicity**: the backend writes into ``.DIR.export-<pid>-<hex>`` beside
  ``DIR``, which is renamed into place only when complete (with ``--force``
  the previous ``DIR`` is moved aside first and removed after), so a killed
  export never leaves a half-written ``DIR``; leftovers of dead processes
  are removed by the next export to the same place;
- **the model card** (``README.md``): run id, dataset hash, metrics and the
  exact code that loads the export;
- **the record**: an :class:`~crucible_core.records.manifest.ExportRecord` in
  the run's manifest (sha256 of every file, the verification when
  ``--verify``) and, in lineage, the export as an artifact that was
  ``exported_from`` its checkpoint and that the run ``produces``.

``--verify`` asks the backend to load the export with the stock library in a
fresh process and compare it with the run's own sampler; above the format's
tolerance the command exits 1 (the export stays, recorded as not verified).
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.cli.output import print_json
from crucible_core.errors import ConfigError, NotFound, UnsupportedError
from crucible_core.ir.backend import CheckpointRef

__all__ = ["FORMATS", "command", "list_checkpoints", "resolve_checkpoint"]

#: Every ``--format`` the command knows; a backend writes the subset it declares.
FORMATS: tuple[str, ...] = ("peft", "merged", "safetensors-full", "gguf", "onnx")


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


def checkpoint_named(ref: str, run_dir: Path, manifest: Mapping[str, Any]) -> str | None:
    """The checkpoint id ``ref`` itself points at, if it names one inside ``run_dir``.

    ``models:/NAME/3`` of a version registered from a kept checkpoint resolves
    to a path in ``RUN/checkpoints/<id>/``, as does a checkpoint path given directly: the
    export is of that checkpoint, not of the run's final weights. None for a
    run id, the run directory or the final weights.
    """
    from crucible_core.cli.runref import expand_ref
    from crucible_core.records.artifacts import uri_path

    given = Path(expand_ref(ref)).expanduser()
    if not given.exists():
        return None
    final = cast(Mapping[str, Any], manifest.get("sampler_checkpoint") or {})
    final_path = uri_path(str(final.get("uri", ""))) if final.get("uri") else None
    if final_path is not None and final_path.resolve() == given.resolve():
        return None  # the final weights: the default
    try:
        inside = given.resolve().relative_to((run_dir / "checkpoints").resolve())
    except ValueError:
        return None
    return inside.parts[0] if inside.parts else None


def _find_run(ref: str) -> tuple[Path, dict[str, Any]]:
    from crucible_core.cli.runref import find_run, list_runs

    try:
        return find_run(ref)
    except NotFound as exc:
        ids = [p.name for p in list_runs()]
        close = difflib.get_close_matches(ref, ids, n=3, cutoff=0.3)
        raise NotFound(
            exc.message,
            hint=(f"closest runs: {', '.join(close)}" if close else exc.hint),
        ) from None


def _check_out(out: Path, force: bool) -> None:
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


class _ExportCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Write a run's weights (its final ones, or --checkpoint ID) as files the stock "
            "Hugging Face libraries load: a PEFT adapter, a merged model, full safetensors, "
            "ONNX or GGUF (which formats depends on the run's backend; see docs/export.md)."
        )
        parser.add_argument(
            "run",
            metavar="RUN",
            help="run id, run directory, checkpoint directory or models:/NAME@ALIAS",
        )
        parser.add_argument(
            "--checkpoint", metavar="ID", help="a checkpoint of the run (default: final weights)"
        )
        parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
        parser.add_argument(
            "--out", required=True, type=Path, metavar="DIR", help="output directory"
        )
        parser.add_argument(
            "--verify",
            action="store_true",
            help="load the export in a fresh process with the stock library and compare it "
            "with the run's own sampler (exit 1 above the format's tolerance)",
        )
        parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
        parser.add_argument("--json", action="store_true", help="print the export record as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from crucible_core.cli.sample_cmd import backend_from_ref
        from crucible_core.ir.codec import convert
        from crucible_core.ir.common import BackendRef
        from crucible_core.ir.training import ModelSpec
        from crucible_core.plugins import get_host

        fmt = cast(str, args.fmt)
        out = cast(Path, args.out).expanduser().absolute()
        run_dir, manifest = _find_run(cast(str, args.run))
        ident = cast(str | None, args.checkpoint) or checkpoint_named(
            cast(str, args.run), run_dir, manifest
        )
        checkpoint = resolve_checkpoint(run_dir, manifest, ident)
        _check_out(out, bool(args.force))
        model_raw = manifest.get("model")
        if not isinstance(model_raw, dict):
            raise ConfigError(
                f"{run_dir}: the manifest records no model", hint="is it a training run?"
            )
        model = convert(cast(dict[str, Any], model_raw), ModelSpec)
        backend_ref = convert(manifest.get("backend") or {"name": "local"}, BackendRef)
        backend = backend_from_ref(get_host(), backend_ref)
        formats = cast(tuple[str, ...], getattr(backend, "export_formats", ()))
        if not formats or not hasattr(backend, "export"):
            raise UnsupportedError(
                f"backend {backend_ref.name!r} cannot export weights",
                hint="export needs a backend with an export method (crucible-local has one)",
            )
        if fmt not in formats:
            raise UnsupportedError(
                f"--format {fmt}: backend {backend_ref.name!r} does not write it",
                hint=f"formats it writes: {', '.join(formats)}",
            )
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
        if args.verify:
            verification = dict(backend.verify_export(model, checkpoint, fmt, out))
        record = _record(run_dir, fmt, out, checkpoint, manifest, result, verification)
        if args.json:
            print_json(msgspec.to_builtins(record))
        else:
            sys.stdout.write(
                f"exported {run_dir.name} as {fmt} to {out} ({len(record.files)} files)\n"
            )
            if verification is not None:
                word = "ok" if verification["ok"] else "FAILED"
                sys.stdout.write(
                    f"verify    {word}: max |logprob diff| {verification['max_abs_diff']:.3g} "
                    f"(tolerance {verification['tolerance']:.3g}, {verification['probes']} probes, "
                    f"{verification['loader']})\n"
                )
        if verification is not None and not verification["ok"]:
            return 1
        return 0


command = _ExportCommand()

"""``crucible export RUN --format F --out DIR``: a run's weights as files other tools load.

The command is thin: it resolves the run and the checkpoint, checks the
output directory, and hands the rest to
:func:`crucible_core.export.export_checkpoint` (atomic write through the
run's backend's optional :class:`~crucible_core.contracts.ExportingBackend`
methods, model card, manifest and lineage record).

``--verify`` asks the backend to load the export with the stock library in a
fresh process and compare it with the run's own sampler; above the format's
tolerance the command exits 1 (the export stays, recorded as not verified).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.cli.output import print_json
from crucible_core.errors import ConfigError, NotFound
from crucible_core.export import FORMATS, list_checkpoints, resolve_checkpoint

__all__ = ["FORMATS", "command", "list_checkpoints", "resolve_checkpoint"]


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
        from crucible_core.export import check_out, export_checkpoint, exporting
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
        check_out(out, bool(args.force))
        model_raw = manifest.get("model")
        if not isinstance(model_raw, dict):
            raise ConfigError(
                f"{run_dir}: the manifest records no model", hint="is it a training run?"
            )
        model = convert(cast(dict[str, Any], model_raw), ModelSpec)
        backend_ref = convert(manifest.get("backend") or {"name": "local"}, BackendRef)
        backend = exporting(backend_from_ref(get_host(), backend_ref), backend_ref.name, fmt)
        done = export_checkpoint(
            backend,
            run_dir,
            manifest,
            model,
            checkpoint,
            fmt,
            out,
            force=bool(args.force),
            verify=bool(args.verify),
        )
        record, verification = done.record, done.verification
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

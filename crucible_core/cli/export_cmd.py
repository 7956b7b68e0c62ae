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
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.cli.output import print_json
from crucible_core.errors import ConfigError, NotFound
from crucible_core.export import FORMATS, list_checkpoints, resolve_checkpoint

__all__ = ["FORMATS", "command", "list_checkpoints", "resolve_checkpoint"]


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
        parser.add_argument("run", metavar="RUN", help="run id or run directory")
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
        checkpoint = resolve_checkpoint(run_dir, manifest, args.checkpoint)
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

"""``crucible datasets``: list sources and samples, show rows, hash a dataset.

* ``crucible datasets list [--json]``
* ``crucible datasets show SOURCE [--head 5] [--json]``
* ``crucible datasets hash SOURCE [--json]``

``SOURCE`` is a dataset URI (``data/train.jsonl``, ``csv:x.csv``,
``hf-disk:DIR``, ``sample:chat``). ``show`` and ``hash`` accept
``--format``, ``--split``, ``--field ROLE=COLUMN``, ``--preset``,
``--option KEY=VALUE`` and ``--on-error skip`` like a DatasetSpec.
Data goes to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, cast

from crucible_core.cli.output import print_json as _print_json
from crucible_core.cli.output import print_table as _print_table
from crucible_core.errors import ConfigError

__all__ = ["DatasetsCommand", "command"]


def _pair(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--{what} expects KEY=VALUE, got {text!r}")
    return key.strip(), value


def _option_value(text: str) -> Any:
    import msgspec

    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def spec_from_args(args: argparse.Namespace, limit: int | None = None) -> Any:
    """A validated DatasetSpec from the command's arguments."""
    from crucible_core.ir import DatasetSpec, convert

    raw: dict[str, Any] = {"uri": args.source, "on_error": args.on_error}
    if args.format:
        raw["format"] = args.format
    if args.split:
        raw["split"] = args.split
    if limit is not None:
        raw["limit"] = limit
    fields = dict(_pair(f, "field") for f in args.field or [])
    if fields:
        raw["fields"] = fields
    options = {k: _option_value(v) for k, v in (_pair(o, "option") for o in args.option or [])}
    if args.preset:
        options["preset"] = args.preset
    if options:
        raw["options"] = options
    return convert(raw, DatasetSpec)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source", metavar="SOURCE", help="dataset URI: path, csv:..., hf-disk:..., sample:chat"
    )
    p.add_argument("--format", help="source format, when the suffix does not say (jsonl, csv, ...)")
    p.add_argument("--split", help="split of a Hugging Face dataset (default train)")
    p.add_argument(
        "--field",
        action="append",
        metavar="ROLE=COLUMN",
        help="map a role (messages, prompt, completion, text, label, chosen, rejected) to a column",
    )
    p.add_argument("--preset", help="row layout: gsm8k, mmlu, humaneval, alpaca, hh")
    p.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="a source option (JSON value or text)",
    )
    p.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="bad rows: stop with an error naming the line (raise) or skip and count them",
    )
    p.add_argument("--json", action="store_true", help="print JSON on stdout")


class DatasetsCommand:
    """The ``datasets`` command (``configure`` + ``run``, the Command contract)."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
        p = sub.add_parser("list", help="dataset sources (schemes, suffixes) and shipped samples")
        p.add_argument("--json", action="store_true", help="print JSON on stdout")
        p = sub.add_parser("show", help="print the first rows of a dataset")
        _add_source_args(p)
        p.add_argument("--head", type=int, default=5, metavar="N", help="rows to show (default 5)")
        p = sub.add_parser("hash", help="the content hash of a dataset (streamed)")
        _add_source_args(p)

    def run(self, args: argparse.Namespace) -> int:
        action = cast(str, args.datasets_command)
        if action == "list":
            return self._list(args)
        if action == "show":
            return self._show(args)
        return self._hash(args)

    def _list(self, args: argparse.Namespace) -> int:
        from crucible_core import list_registrations

        regs = list_registrations("dataset")
        sources = [r for r in regs if r.metadata.get("kind") != "sample"]
        samples = [r for r in regs if r.metadata.get("kind") == "sample"]
        if args.json:
            _print_json(
                {
                    "sources": [
                        {
                            "name": r.name,
                            "schemes": list(r.metadata.get("schemes", [])),
                            "suffixes": list(r.metadata.get("suffixes", [])),
                            "summary": r.summary,
                            "plugin": r.plugin,
                        }
                        for r in sources
                    ],
                    "samples": [
                        {
                            "name": r.name,
                            "rows": r.metadata.get("rows"),
                            "dataset_kind": r.metadata.get("dataset_kind"),
                            "preset": r.metadata.get("preset"),
                            "summary": r.summary,
                            "plugin": r.plugin,
                        }
                        for r in samples
                    ],
                }
            )
            return 0
        _print_table(
            ["source", "schemes", "suffixes", "summary"],
            [
                [
                    r.name,
                    ", ".join(r.metadata.get("schemes", [])),
                    ", ".join(r.metadata.get("suffixes", [])),
                    r.summary,
                ]
                for r in sources
            ],
        )
        sys.stdout.write("\n")
        _print_table(
            ["sample", "rows", "kind", "summary"],
            [
                [r.name, r.metadata.get("rows"), r.metadata.get("dataset_kind"), r.summary]
                for r in samples
            ],
        )
        return 0

    def _show(self, args: argparse.Namespace) -> int:
        import msgspec

        from crucible_datasets.loading import stream_rows
        from crucible_datasets.sources import ErrorLog

        if args.head < 1:
            raise ConfigError(f"--head must be at least 1, got {args.head}")
        spec = spec_from_args(args, limit=args.head)
        errors = ErrorLog(spec.on_error)
        info: dict[str, Any] = {}
        rows = list(stream_rows(spec, errors, info=info))
        if args.json:
            _print_json(
                {
                    "source": info["source"],
                    "kind": info["kind"],
                    "columns": info["columns"],
                    "rows": rows,
                    "skipped": errors.skipped,
                }
            )
            return 0
        sys.stderr.write(
            f"{info['source']}: kind {info['kind']}, columns: {', '.join(info['columns'])}"
            + (f"; {errors.skipped} bad row(s) skipped" if errors.skipped else "")
            + "\n"
        )
        encode = msgspec.json.Encoder(enc_hook=str).encode
        for row in rows:
            sys.stdout.write(encode(row).decode() + "\n")
        return 0

    def _hash(self, args: argparse.Namespace) -> int:
        from crucible_datasets.hashing import DatasetHasher
        from crucible_datasets.loading import stream_rows
        from crucible_datasets.sources import ErrorLog

        spec = spec_from_args(args)
        errors = ErrorLog(spec.on_error)
        info: dict[str, Any] = {}
        hasher = DatasetHasher()
        for row in stream_rows(spec, errors, info=info):
            hasher.update(row)
        digest = hasher.hexdigest()
        if args.json:
            _print_json(
                {
                    "source": info["source"],
                    "hash": digest,
                    "rows": hasher.rows,
                    "skipped": errors.skipped,
                }
            )
            return 0
        sys.stdout.write(f"{digest}\n")
        sys.stderr.write(
            f"{info['source']}: {hasher.rows} rows"
            + (f", {errors.skipped} skipped" if errors.skipped else "")
            + "\n"
        )
        return 0


command = DatasetsCommand()

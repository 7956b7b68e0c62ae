"""``crucible runs``: list runs, show one, diff two runs' reproducibility records.

The status shown is the run status of :mod:`crucible_core.records.runstatus`,
``crashed`` for a run whose process died while it said ``running``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any, cast

from crucible_core.cli.output import print_json, print_table
from crucible_core.cli.runref import find_run, list_runs
from crucible_core.records.artifacts import read_manifest
from crucible_core.records.runstatus import effective_status

__all__ = ["RECORD_KEYS", "command", "diff_records", "record_of"]

#: What makes a run reproducible: the keys ``runs diff`` compares.
RECORD_KEYS: tuple[str, ...] = (
    "job_config_digest",
    "seed",
    "dataset",
    "template",
    "tokenizer",
    "backend",
    "model",
    "versions",
    "environment",
    "training_job",
)
_IGNORED = {"created_at", "updated_at", "started_at", "finished_at"}


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in cast(Mapping[str, Any], value).items():
            if k not in _IGNORED:
                _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def record_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened reproducibility record of a run's manifest."""
    out: dict[str, Any] = {}
    for key in RECORD_KEYS:
        if key in manifest:
            _flatten(key, manifest[key], out)
    return out


def diff_records(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every key whose value differs between two manifests' records (missing = None)."""
    ra, rb = record_of(a), record_of(b)
    return [
        {"key": k, "a": ra.get(k), "b": rb.get(k)}
        for k in sorted(set(ra) | set(rb))
        if ra.get(k) != rb.get(k)
    ]


class _RunsCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
        p = sub.add_parser("list", help="runs under $CRUCIBLE_HOME/runs, oldest first")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("show", help="one run's manifest")
        p.add_argument("run")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser(
            "diff",
            help="what differs between two runs' records (config, seeds, data, versions...)",
        )
        p.add_argument("run_a")
        p.add_argument("run_b")
        p.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        if args.runs_command == "list":
            rows: list[dict[str, Any]] = []
            for run in list_runs():
                m = read_manifest(run)
                training = cast(Mapping[str, Any], m.get("training") or {})
                rows.append(
                    {
                        "run": run.name,
                        "status": effective_status(run, m),
                        "backend": cast(Mapping[str, Any], m.get("backend") or {}).get("name"),
                        "steps": training.get("steps"),
                        "final_loss": training.get("final_loss"),
                        "created_at": m.get("created_at"),
                    }
                )
            if args.json:
                print_json(rows)
            else:
                print_table(
                    ["run", "status", "backend", "steps", "final loss"],
                    [
                        [
                            r["run"],
                            r["status"],
                            r["backend"],
                            r["steps"],
                            None if r["final_loss"] is None else f"{r['final_loss']:.4f}",
                        ]
                        for r in rows
                    ],
                )
            return 0
        if args.runs_command == "show":
            run_dir, manifest = find_run(args.run)
            # "crashed" is derived (the owner died while running), never stored.
            manifest = {**manifest, "status": effective_status(run_dir, manifest)}
            if args.json:
                print_json(manifest)
            else:
                record = record_of(manifest)
                for key in sorted(record):
                    sys.stdout.write(f"{key} = {record[key]!r}\n")
                sys.stdout.write(f"status = {manifest.get('status')!r}\nrun_dir = {run_dir}\n")
            return 0
        _, a = find_run(args.run_a)
        _, b = find_run(args.run_b)
        diffs = diff_records(a, b)
        if args.json:
            print_json({"a": args.run_a, "b": args.run_b, "differences": diffs})
            return 0
        if not diffs:
            sys.stdout.write("the two runs' records are identical\n")
            return 0
        print_table(["key", args.run_a, args.run_b], [[d["key"], d["a"], d["b"]] for d in diffs])
        return 0


command = _RunsCommand()

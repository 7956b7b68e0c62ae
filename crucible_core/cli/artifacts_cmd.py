"""``crucible artifacts verify RUN``: rehash a run's artifacts against its manifest.

RUN is a job id (its run directory under ``$CRUCIBLE_HOME/runs``) or a path
to (or inside) a run directory. Exit 0 when every file matches, 1 when any is
missing or altered (each is listed), 4 when there is no such run, 2 when RUN
is neither a valid id nor a path inside a run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crucible_core.cli.output import print_json


def _run_dir(ref: str) -> Path:
    from crucible_core.cli.runref import resolve_run

    return resolve_run(ref)


class _ArtifactsCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="artifacts_command", metavar="ACTION", required=True)
        p = sub.add_parser(
            "verify",
            help="recompute a run's artifact hashes; exit 1 if any is missing or altered",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("run", metavar="RUN", help="job id or run directory")
        p.add_argument("--json", action="store_true", help="print the report as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from crucible_core.records.artifacts import verify_run

        report = verify_run(_run_dir(args.run))
        if args.json:
            print_json(report.to_dict())
            return 0 if report.ok else 1
        out = sys.stdout
        for path in report.missing:
            out.write(f"MISSING  {path}\n")
        for altered in report.altered:
            out.write(f"ALTERED  {altered.path}  expected {altered.expected[:12]}")
            out.write(f" found {altered.actual[:12]}\n")
        for label in report.unverifiable:
            sys.stderr.write(f"warning: {label}: no local path or sha256 to check\n")
        if report.ok:
            out.write(f"ok: {len(report.checked)} file(s) match the manifest of {report.run_dir}\n")
            return 0
        problems = len(report.missing) + len(report.altered)
        sys.stderr.write(
            f"error: {problems} problem(s) in {report.run_dir} "
            f"({len(report.checked)} file(s) match)\n"
        )
        return 1


command = _ArtifactsCommand()

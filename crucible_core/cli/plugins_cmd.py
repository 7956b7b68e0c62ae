"""``crucible plugins``: what is installed, whether it loaded, and what it registers."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from crucible_core.cli.output import print_json, print_table
from crucible_core.plugins import KINDS, get_host


class _PluginsCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON on stdout")
        parser.add_argument(
            "--kind",
            choices=sorted(KINDS),
            help="only list registrations of this kind",
        )

    def run(self, args: argparse.Namespace) -> int:
        host = get_host()
        infos = host.plugins()
        kinds = [args.kind] if args.kind else list(KINDS)
        regs: list[dict[str, Any]] = []
        for kind in kinds:
            regs.extend(
                r.describe()
                for r in sorted(host.registrations(kind).values(), key=lambda r: r.name)
            )
        if args.json:
            print_json({"plugins": [i.describe() for i in infos], "registrations": regs})
            return 0
        print_table(
            ["plugin", "distribution", "version", "status"],
            [[i.name, i.distribution, i.version, i.status] for i in infos],
        )
        broken = [i for i in infos if i.status == "error"]
        for info in broken:
            sys.stderr.write(f"warning: plugin {info.name!r} failed: {info.error}\n")
            if info.hint:
                sys.stderr.write(f"  hint: {info.hint}\n")
        sys.stdout.write("\n")
        print_table(
            ["kind", "name", "plugin", "summary"],
            [[r["kind"], r["name"], r["plugin"], r["summary"]] for r in regs],
        )
        return 0


command = _PluginsCommand()

"""``crucible plugins``: what is installed, whether it loaded, and what it registers.

It reports every plugin even under ``CRUCIBLE_STRICT_PLUGINS=1`` (a strict
host would stop at the first broken one) and only then exits 3 if any plugin
has a problem.
"""

from __future__ import annotations

import argparse
from typing import Any

from crucible_core.cli.output import print_json, print_table, warn
from crucible_core.plugins import KINDS, PluginHost, PluginInfo, diagnostic_host, strict_mode


def hooks_column(info: PluginInfo) -> str:
    """The hooks a plugin implements, short (``backends, on_event``)."""
    return ", ".join(h.removeprefix("register_") for h in info.hooks)


def detail_column(info: PluginInfo) -> str:
    """Why a plugin is not plainly ``ok``: its error, else its warnings."""
    return info.error or "; ".join(info.warnings)


def report_problems(host: PluginHost, infos: list[PluginInfo]) -> None:
    """Host and plugin warnings, and each broken plugin's hint, on stderr."""
    for message in host.warnings:
        warn(message)
    for info in infos:
        for message in info.warnings:
            warn(f"plugin {info.name!r}: {message}")
        if info.status in ("error", "conflict") and info.hint:
            warn(f"plugin {info.name!r}: {info.error}\n  hint: {info.hint}")


def _registrations(host: PluginHost, kinds: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for kind in kinds:
        rows = [r.describe() for r in host.registrations(kind, check=False).values()]
        for clash in host.conflicts(kind).values():
            rows.extend({**r.describe(), "conflict": True} for r in clash)
        out.extend(sorted(rows, key=lambda r: (r["name"], r["plugin"])))
    return out


class _PluginsCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON on stdout")
        parser.add_argument(
            "--kind",
            choices=sorted(KINDS),
            help="only list registrations of this kind",
        )

    def run(self, args: argparse.Namespace) -> int:
        host = diagnostic_host()
        infos = host.plugins()
        regs = _registrations(host, [args.kind] if args.kind else list(KINDS))
        if args.json:
            print_json(
                {
                    "plugins": [i.describe() for i in infos],
                    "registrations": regs,
                    "warnings": list(host.warnings),
                }
            )
        else:
            print_table(
                ["plugin", "distribution", "version", "status", "hooks", "detail"],
                [
                    [i.name, i.distribution, i.version, i.status, hooks_column(i), detail_column(i)]
                    for i in infos
                ],
            )
            report_problems(host, infos)
            print()
            print_table(
                ["kind", "name", "plugin", "summary"],
                [
                    [
                        r["kind"],
                        r["name"],
                        r["plugin"],
                        ("CONFLICT " if r.get("conflict") else "") + r["summary"],
                    ]
                    for r in regs
                ],
            )
        if strict_mode():
            host.check()
        return 0


command = _PluginsCommand()

"""``crucible doctor``: environment checks and each plugin's import time and status.

Under ``CRUCIBLE_STRICT_PLUGINS=1`` it still diagnoses every plugin first,
then exits 3 if any has a problem.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any

from crucible_core import __version__
from crucible_core.cli.output import print_json, print_table
from crucible_core.cli.plugins_cmd import detail_column, hooks_column, report_problems
from crucible_core.plugins import diagnostic_host, strict_mode


def _home_check() -> dict[str, Any]:
    home = Path(os.environ.get("CRUCIBLE_HOME", ".crucible"))
    probe = home if home.exists() else home.parent if home.parent.exists() else Path(".")
    writable = os.access(probe, os.W_OK)
    return {
        "check": "crucible_home",
        "ok": writable,
        "detail": f"{home} ({'writable' if writable else 'not writable'})",
    }


def _database_check() -> dict[str, Any]:
    """``PRAGMA quick_check`` of the queue database, if there is one (nothing is created)."""
    from crucible_core.queue._db import describe_problems
    from crucible_core.queue.dbrepair import check_file
    from crucible_core.records.paths import db_path

    path = db_path()
    if not path.is_file():
        return {"check": "database", "ok": True, "detail": f"{path} (not created yet)"}
    problems = check_file(path)
    if not problems:
        return {"check": "database", "ok": True, "detail": f"{path} (quick_check ok)"}
    return {
        "check": "database",
        "ok": False,
        "detail": f"{path} is corrupt ({describe_problems(problems)}); stop every worker and "
        f"run `crucible jobs recover --db {path}`",
    }


class _DoctorCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON on stdout")

    def run(self, args: argparse.Namespace) -> int:
        host = diagnostic_host()
        infos = host.plugins()
        checks = [
            {
                "check": "python",
                "ok": sys.version_info >= (3, 11),
                "detail": platform.python_version(),
            },
            {"check": "crucible", "ok": True, "detail": __version__},
            _home_check(),
            _database_check(),
        ]
        plugins_ok = all(i.status in ("ok", "disabled") and not i.warnings for i in infos)
        ok = all(c["ok"] for c in checks) and plugins_ok
        if args.json:
            print_json(
                {
                    "ok": ok,
                    "checks": checks,
                    "plugins": [i.describe() for i in infos],
                    "warnings": list(host.warnings),
                }
            )
            if strict_mode():
                host.check()
            return 0 if ok else 1
        print_table(
            ["check", "ok", "detail"],
            [[c["check"], "yes" if c["ok"] else "NO", c["detail"]] for c in checks],
        )
        sys.stdout.write("\n")
        print_table(
            ["plugin", "status", "import ms", "hooks", "detail"],
            [
                [i.name, i.status, f"{i.load_ms:.1f}", hooks_column(i), detail_column(i)]
                for i in infos
            ],
        )
        report_problems(host, infos)
        if strict_mode():
            host.check()
        return 0 if ok else 1


command = _DoctorCommand()

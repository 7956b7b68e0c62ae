"""Start-up cost of `crucible --help` and `crucible plugins` vs `python -c "import crucible_core"`.

Targets (issue 3): each <= 300 ms, and within 1.5x of the bare import, with
every plugin of plugins/ installed (run after scripts/setup.sh --all).
Run: .venv/bin/python -m benchmarks.cli_startup_bench
"""

from __future__ import annotations

import os
import shutil
import sys

from benchmarks._util import command_ms


def main() -> None:
    exe = shutil.which("crucible", path=os.path.dirname(sys.executable)) or "crucible"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    bare = command_ms([sys.executable, "-c", "pass"], env=env)
    base = command_ms([sys.executable, "-c", "import crucible_core"], env=env)
    rows = [
        ("python -c pass", bare),
        ('python -c "import crucible_core"', base),
        ("crucible --help", command_ms([exe, "--help"], env=env)),
        ("crucible plugins", command_ms([exe, "plugins"], env=env)),
        ("crucible plugins --json", command_ms([exe, "plugins", "--json"], env=env)),
    ]
    from crucible_core.plugins import PluginHost

    names = [p.name for p in PluginHost().plugins()]
    print(f"plugins installed: {', '.join(names)}")
    print(f"{'command':36} {'median ms':>10} {'x import':>9}")
    for name, ms in rows:
        print(f"{name:36} {ms:10.1f} {ms / base:9.2f}")
    for name, ms in rows[2:]:
        verdict = "met" if ms <= 300 and ms <= 1.5 * base else "NOT met"
        print(f"target <= 300 ms and <= 1.5x import for {name!r}: {verdict}")


if __name__ == "__main__":
    main()

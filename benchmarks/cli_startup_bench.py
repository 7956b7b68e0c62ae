"""Start-up cost of `crucible --help` and `crucible plugins` vs `python -c "import crucible_core"`.

Targets (issue 3): each <= 300 ms, and within 1.5x of the bare import, with
every plugin of plugins/ installed (run after scripts/setup.sh --all). Issue
12: `crucible --help` lists plugin commands from the command index, so it is
timed with the index written (the steady state, after any command that loads
plugins) and, for reference, without one. The index goes to a temporary
CRUCIBLE_CACHE_DIR. Runs are interleaved so load drift hits every row alike.
Run: .venv/bin/python -m benchmarks.cli_startup_bench
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from benchmarks._util import interleaved_ms


def main() -> None:
    exe = shutil.which("crucible", path=os.path.dirname(sys.executable)) or "crucible"
    # Bytecode caching on, as for an installed package (PYTHONDONTWRITEBYTECODE=1 would
    # time the compiler, not start-up); the first runs below write the .pyc files.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CRUCIBLE_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    cache = tempfile.mkdtemp(prefix="crucible-bench-cache-")
    env["CRUCIBLE_CACHE_DIR"] = cache
    unindexed_env = {**env, "CRUCIBLE_CACHE_DIR": os.path.join(cache, "empty")}
    subprocess.run([exe, "plugins"], env=env, check=True, capture_output=True)  # writes the index
    subprocess.run([exe, "--help"], env=unindexed_env, check=True, capture_output=True)
    help_text = subprocess.run(
        [exe, "--help"], env=env, check=True, capture_output=True, text=True
    ).stdout
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        'python -c "import crucible_core"': [sys.executable, "-c", "import crucible_core"],
        "crucible --help": [exe, "--help"],
        "crucible plugins": [exe, "plugins"],
        "crucible plugins --json": [exe, "plugins", "--json"],
    }
    times = dict(zip(commands, interleaved_ms(list(commands.values()), env=env), strict=True))
    # Without an index the help scans the entry points instead (first run after an install).
    unindexed = interleaved_ms(
        [commands['python -c "import crucible_core"'], [exe, "--help"]], env=unindexed_env
    )
    times["crucible --help (no index yet)"] = unindexed[1] * (
        times['python -c "import crucible_core"'] / unindexed[0]
    )
    shutil.rmtree(cache, ignore_errors=True)
    from crucible_core.plugins import PluginHost

    names = [p.name for p in PluginHost().plugins()]
    plugin_lines = [line for line in help_text.splitlines() if line.rstrip().endswith("]")]
    print(f"plugins installed: {', '.join(names)}")
    print(f"plugin commands in --help: {len(plugin_lines)}")
    base = times['python -c "import crucible_core"']
    print(f"{'command':36} {'median ms':>10} {'x import':>9}")
    for name, ms in times.items():
        print(f"{name:36} {ms:10.1f} {ms / base:9.2f}")
    for name, ms in times.items():
        if name.startswith("crucible"):
            verdict = "met" if ms <= 300 and ms <= 1.5 * base else "NOT met"
            print(f"target <= 300 ms and <= 1.5x import for {name!r}: {verdict}")


if __name__ == "__main__":
    main()

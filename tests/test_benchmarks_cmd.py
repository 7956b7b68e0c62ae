"""The commands the benchmark scripts document actually start.

``python benchmarks/x.py`` puts ``benchmarks/`` (not the repository) on
``sys.path``, so ``from benchmarks._util import ...`` fails there; the
documented form is ``python -m benchmarks.x`` from the repository root.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*_bench.py"))
_COMMAND = re.compile(r"\.venv/bin/python (-m benchmarks\.(\w+)|benchmarks/\S+)")


def _documented(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in _COMMAND.finditer(text)]


def test_every_script_documents_the_module_form() -> None:
    assert len(SCRIPTS) >= 10
    for script in SCRIPTS:
        commands = _documented(script.read_text())
        assert commands, f"{script.name} documents no command"
        for command, module in commands:
            assert module == script.stem, f"{script.name} documents {command!r}"


def test_docs_quote_only_the_module_form() -> None:
    docs = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *ROOT.glob("plugins/*/README.md")]
    for doc in docs:
        for command, module in _documented(doc.read_text()):
            assert module is not None, f"{doc.relative_to(ROOT)} documents {command!r}"
            assert (ROOT / "benchmarks" / f"{module}.py").is_file(), (doc, command)


def test_documented_command_starts_from_the_repository_root() -> None:
    # Exactly the documented form (interpreter aside), cheaply: --help exits after imports.
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.plan_bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "--rows" in out.stdout
    # Every script's imports resolve in that form (the ones without --help would run).
    modules = ", ".join(f"benchmarks.{s.stem}" for s in SCRIPTS)
    out = subprocess.run(
        [sys.executable, "-c", f"import {modules}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr

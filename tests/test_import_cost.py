"""`import crucible_core` and the CLI's start-up stay free of heavy dependencies."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ["torch", "numpy", "networkx", "tinker", "fastapi", "transformers", "peft", "rich"]


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return [m for m in proc.stdout.strip().split(",") if m]


@pytest.mark.parametrize(
    "code",
    [
        "import crucible_core",
        "import crucible_core.ir",
        "import crucible_core.contracts",
        "from crucible_core.plugins import PluginHost; PluginHost(autoload=False)",
        "from crucible_core.cli.main import build_parser; build_parser(None)",
    ],
)
def test_core_imports_nothing_heavy(code: str) -> None:
    assert _loaded_after(code) == []


def test_help_does_not_load_plugins_or_pluggy() -> None:
    probe = (
        "import sys\nfrom crucible_core.cli.main import build_parser\nbuild_parser(None)\n"
        "print('pluggy' in sys.modules, 'msgspec' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.split() == ["False", "False"]

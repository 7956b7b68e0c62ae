"""``check_light_import``: a plugin's ``plugin.py`` must be cheap to import.

A plugin's ``plugin.py`` is imported whenever ``crucible`` lists plugins;
importing torch there costs every command seconds. The check imports the
module in a fresh interpreter and fails if any of ``heavy`` got loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from crucible_core.testing._guard import require

__all__ = ["DEFAULT_HEAVY_MODULES", "check_light_import"]

#: Modules a plugin's ``plugin.py`` must not pull in at import time.
DEFAULT_HEAVY_MODULES: tuple[str, ...] = (
    "torch",
    "numpy",
    "transformers",
    "peft",
    "tinker",
    "networkx",
    "fastapi",
    "starlette",
    "uvicorn",
    "pyarrow",
    "datasets",
)


def check_light_import(module: str, heavy: Sequence[str] = DEFAULT_HEAVY_MODULES) -> None:
    """Import ``module`` in a fresh interpreter and fail if it pulled in a heavy module."""
    code = (
        "import sys, importlib\n"
        f"importlib.import_module({module!r})\n"
        f"heavy = [m for m in {list(heavy)!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    # The child sees this process's sys.path, so modules importable here are importable there.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    require(proc.returncode == 0, f"importing {module} failed:\n{proc.stderr}")
    loaded = proc.stdout.strip()
    require(not loaded, f"importing {module} pulled in heavy modules: {loaded}")

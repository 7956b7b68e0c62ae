"""The third-party example plugin: pip-installed into a test environment, then discovered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crucible_core.testing import check_inference_backend, check_light_import

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin-hello"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """pip-install the example into a fresh target directory put on PYTHONPATH (no index used).

    It is built from a copy: setuptools leaves ``build/`` and ``*.egg-info`` in the
    directory it builds, and an ``.egg-info`` in the source tree would make the example
    an installed plugin for every later test that puts that directory on sys.path.
    """
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "plugin-hello"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
            "--no-build-isolation", "--target", str(target), str(source),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    env.pop("CRUCIBLE_PLUGINS", None)
    return env


def test_installed_plugin_is_listed(installed: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "crucible_core.cli.main", "plugins", "--json"],
        env=installed, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    data = json.loads(proc.stdout)
    hello = next(p for p in data["plugins"] if p["name"] == "hello")
    assert hello == {**hello, "distribution": "crucible-hello", "version": "0.1.0", "status": "ok"}
    backend = next(r for r in data["registrations"] if r["name"] == "hello")
    assert backend["kind"] == "backend"
    assert backend["capabilities"]["supports_streaming"] is True


def test_installed_plugin_resolves_through_get_backend(installed: dict[str, str]) -> None:
    code = (
        "import crucible_core\n"
        "from crucible_core.ir import Prompt, SamplingParams\n"
        "b = crucible_core.get_backend('hello', greeting='Howdy')\n"
        "print(b.complete(Prompt(text='Ada'), SamplingParams(max_tokens=5, temperature=0)).text)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=installed, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert proc.stdout.strip() == "Howdy, Ada!"


def test_example_backend_conforms() -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from crucible_hello.backend import HelloBackend

        check_inference_backend(HelloBackend())
        check_light_import("crucible_hello.plugin")
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in [m for m in sys.modules if m.startswith("crucible_hello")]:
            del sys.modules[name]

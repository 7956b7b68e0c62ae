"""`crucible ask --hedge` through the real CLI and plugin host."""

from __future__ import annotations

import json
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import crucible_hedging.plugin as hedging_plugin
import pytest

from crucible_core import hookimpl
from crucible_core.cli.main import main
from crucible_core.ir import Capabilities
from crucible_core.testing import isolated_host


@pytest.fixture
def slow_host(slow: Callable[..., Any]) -> Iterator[Any]:
    """A 'slow' backend whose first call takes 3 s and whose backups answer at once."""
    backend = slow([3.0, 0.0])

    def register_backends(register: Any) -> None:
        register("slow", lambda **_: backend, capabilities=Capabilities(backend_id="slow"))

    plugin = types.SimpleNamespace(register_backends=hookimpl(register_backends))
    with isolated_host(plugin, hedging_plugin) as host:
        yield host


def test_ask_hedges_a_slow_call(slow_host: Any, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    argv = ["ask", "hi", "--backend", "slow", "--hedge", "fixed:50", "--budget", "1", "--json"]
    assert main(argv) == 0
    assert time.monotonic() - t0 < 2.0
    assert json.loads(capsys.readouterr().out)["text"] == "answer 1 is ready"  # the backup's


def test_ask_refuses_a_bad_budget(slow_host: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "hi", "--backend", "slow", "--hedge", "fixed:50", "--budget", "2"]) == 2
    assert "hedging.budget: must be a fraction in [0, 1]" in capsys.readouterr().err

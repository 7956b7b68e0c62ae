"""`crucible ask --ensemble` (and with `--hedge`) through the real CLI and plugin host."""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Iterator
from typing import Any

import crucible_ensemble.plugin as ensemble_plugin
import pytest

from crucible_core import hookimpl
from crucible_core.cli.main import main
from crucible_core.ir import Capabilities
from crucible_core.testing import isolated_host


@pytest.fixture
def host_with(scripted: Callable[..., Any]) -> Iterator[Any]:
    """Core, crucible-ensemble and a 'scripted' backend whose copies answer in turn:
    each new copy answers the next of 'yes', 'yes', 'no', ..."""
    answers = iter(["yes", "yes", "no", "yes", "no", "no"])

    def register_backends(register: Any) -> None:
        register(
            "scripted",
            lambda **_: scripted("s", next(answers)),
            capabilities=Capabilities(backend_id="s"),
        )

    plugin = types.SimpleNamespace(register_backends=hookimpl(register_backends))
    with isolated_host(plugin, ensemble_plugin) as host:
        yield host


def test_ask_votes_over_copies_of_a_backend(
    host_with: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", "ok?", "--backend", "scripted", "--ensemble", "majority:3", "--temperature", "0"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["answer"] == "yes"
    assert result["agreement"] >= 2 / 3  # 1.0 when early stop needed only the two yes
    assert [o["member"] for o in result["outcomes"]] == ["s", "s#2", "s#3"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "no\n"  # copies 4-6 answer yes, no, no
    assert "majority: agreement" in err
    assert "over 3 members" in err


def test_ask_names_an_unknown_strategy(host_with: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "ok?", "--backend", "scripted", "--ensemble", "majorty"]) == 4
    assert "did you mean 'majority'" in capsys.readouterr().err

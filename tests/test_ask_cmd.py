"""`crucible ask`: one backend (streamed), a run's weights, and clear errors for what is missing.

Ensembles and hedging through `ask` are tested in those plugins' own suites, where
the plugins are installed; here the host holds only core and the toy backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crucible_core.cli.ask_cmd import parse_option, parse_spec
from crucible_core.cli.main import main
from crucible_core.errors import ConfigError
from crucible_core.ir import encode
from crucible_core.plugins import PluginHost
from tests.test_training_workflow import make_job
from tests.toy_backend import toy_plugin


@pytest.fixture
def toy(host: PluginHost, crucible_home: Path) -> PluginHost:
    host.add_plugin(toy_plugin(), name="toy")
    return host


def test_one_backend_streams_its_answer(
    toy: PluginHost, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ask", "abc", "--backend", "toy", "--max-tokens", "3", "--temperature", "0"]) == 0
    streamed = capsys.readouterr().out
    assert main(["ask", "abc", "--backend", "toy", "--max-tokens", "3", "--temperature", "0",
                 "--json"]) == 0  # fmt: skip
    completion = json.loads(capsys.readouterr().out)
    assert streamed == completion["text"] + "\n"
    assert completion["backend_id"] == "toy"
    assert len(completion["tokens"]) == 3


def test_a_run_s_weights_answer_with_model(
    toy: PluginHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(encode(make_job()))
    assert main(["train", str(path), "--job-id", "asked", "--no-progress"]) == 0
    capsys.readouterr()
    argv = ["ask", "row 1", "--model", "asked", "--max-tokens", "4", "--temperature", "0"]
    assert main([*argv, "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert main(["sample", "asked", "--prompt", "row 1", "--max-tokens", "4",
                 "--temperature", "0", "--json"]) == 0  # fmt: skip
    sampled = json.loads(capsys.readouterr().out)[0]
    assert trained["text"] == sampled["text"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--backend", "tyo"], 4, "did you mean 'toy'"),
        (["--backend", "toy", "--ensemble", "majority"], 4, "pip install crucible-ensemble"),
        (["--backend", "toy", "--hedge", "fixed:10"], 4, "pip install crucible-hedging"),
        (["--backend", "toy", "--ensemble", "majority:1"], 2, "at least 2 members, got 1"),
        (["--backend", "toy", "--ensemble", ":3"], 2, "--ensemble: expected NAME or NAME:VALUE"),
        (["--backend", "toy", "--hedge", "fixed:soon"], 2, "--hedge: 'soon' is not a number"),
        (["--backend", "toy", "--hedge", "adaptive:3"], 2, "takes no value"),
        (["--backend", "toy", "--option", "novalue"], 2, "--option: expected KEY=VALUE"),
        (["--backend", "toy", "--temperature", "-1"], 2, "temperature"),
    ],
)
def test_mistakes_are_one_line_errors(
    toy: PluginHost, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert main(["ask", "hi", *argv]) == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_option_values_are_json_when_they_parse() -> None:
    assert parse_option("rank=8") == ("rank", 8)
    assert parse_option("url=http://127.0.0.1:1") == ("url", "http://127.0.0.1:1")
    assert parse_option("flag=true") == ("flag", True)
    assert parse_spec("--hedge", "percentile:95") == ("percentile", "95")
    assert parse_spec("--hedge", "adaptive") == ("adaptive", None)
    with pytest.raises(ConfigError):
        parse_spec("--hedge", "percentile:")


def test_fallback_without_the_router_applies_when_creating_the_backend(
    toy: PluginHost, capsys: pytest.CaptureFixture[str]
) -> None:
    """No crucible-router in this host: a primary that cannot be created falls back to the
    next ``--fallback``; the old command refused the unknown name."""
    argv = ["ask", "abc", "--backend", "not-installed", "--fallback", "toy", "--json",
            "--max-tokens", "3", "--temperature", "0"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["backend_id"] == "toy"
    assert main(["ask", "abc", "--backend", "not-installed", "--fallback", "nor-this"]) == 1
    assert "no backend could be created: not-installed" in capsys.readouterr().err

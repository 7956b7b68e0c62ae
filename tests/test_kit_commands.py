"""check_command runs real commands as the CLI does and names the rule a broken one breaks."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pytest

from crucible_core.errors import ConfigError, NotFound
from crucible_core.testing import ConformanceError, check_command


def test_core_commands_pass() -> None:
    from crucible_core.cli.ir_cmd import command

    run = check_command(command, ["types"], name="ir")
    assert "Experiment" in run.stdout
    usage = check_command(command, ["no-such-action"], name="ir", exit_code=2)
    assert "invalid choice" in usage.stderr


class Greet:
    """A good command: one argument, a typed error for a user mistake."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name")

    def run(self, args: argparse.Namespace) -> int:
        if args.name == "nobody":
            raise NotFound("greet: no one called 'nobody'", hint="give a real name")
        sys.stdout.write(f"hello {args.name}\n")
        return 0


def test_a_good_command_and_its_typed_error() -> None:
    assert check_command(Greet(), ["ada"]).stdout == "hello ada\n"
    run = check_command(Greet(), ["nobody"], exit_code=4)
    assert isinstance(run.error, NotFound)


class _ConfigureRaises(Greet):
    def configure(self, parser: argparse.ArgumentParser) -> None:
        raise TypeError("bad option")


class _BadHelp(Greet):
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rate", help="learning rate in % of the default")


class _Traceback(Greet):
    def run(self, args: argparse.Namespace) -> int:
        raise ValueError("oops")


class _Exits(Greet):
    def run(self, args: argparse.Namespace) -> int:
        sys.exit(3)


class _ReturnsText(Greet):
    def run(self, args: argparse.Namespace) -> Any:
        return "ok"


class _ReturnsHuge(Greet):
    def run(self, args: argparse.Namespace) -> int:
        return 300


class _MultiLine(Greet):
    def run(self, args: argparse.Namespace) -> int:
        raise ConfigError("greet failed:\nsee below")


class _Fails(Greet):
    def run(self, args: argparse.Namespace) -> int:
        sys.stderr.write("it went wrong\n")
        return 1


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (_ConfigureRaises(), r"configure\(parser\) raised TypeError: bad option"),
        (_BadHelp(), "the parser's --help raised TypeError"),
        (_Traceback(), "raised ValueError: oops.*reaches the user as a traceback"),
        (_Exits(), r"called sys.exit\(3\): return the exit status instead"),
        (_ReturnsText(), "must return None or an int exit status, got str"),
        (_ReturnsHuge(), "returned 300: an exit status is 0..255"),
        (_MultiLine(), "multi-line message"),
        (_Fails(), "exited 1, expected 0; stderr: 'it went wrong'"),
        (object(), r"a command needs configure\(parser\) and run\(args\)"),
    ],
)
def test_broken_commands_fail_with_the_rule(command: Any, message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_command(command, ["ada"])

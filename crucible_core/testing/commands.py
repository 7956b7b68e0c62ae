"""``check_command``: a plugin's CLI subcommand, run the way ``crucible`` runs it.

What it asserts (each failure names the call and the rule):

1. The object has ``configure(parser)`` and ``run(args)``
   (:class:`~crucible_core.contracts.Command`).
2. ``configure`` accepts a fresh ``argparse.ArgumentParser`` and the
   resulting ``--help`` renders (a stray ``%`` in a help string breaks it).
3. ``run(args)`` on the parsed ``argv`` returns ``None`` or an exit status
   (an ``int`` in 0..255), within ``timeout``.
4. A failure is a :class:`~crucible_core.errors.CrucibleError` with a
   one-line message: the CLI prints it and exits with its code. Any other
   exception would reach the user as a traceback, and ``sys.exit`` inside
   ``run`` bypasses the CLI's error handling: both break the contract.
5. The exit status (``run``'s result, the error's code, or 2 when argparse
   rejects ``argv``) equals ``exit_code``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crucible_core.contracts import Command
from crucible_core.errors import CrucibleError, exit_code_for
from crucible_core.testing._guard import Calls, ConformanceError, require

__all__ = ["CommandRun", "check_command"]


@dataclass(frozen=True)
class CommandRun:
    """What one run of a command did: its exit status and captured output."""

    status: int
    stdout: str
    stderr: str
    error: CrucibleError | None = None


def _run(command: Any, parser: argparse.ArgumentParser, argv: list[str]) -> CommandRun:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse: usage error (2) or --help (0)
            return CommandRun(int(exc.code or 0), out.getvalue(), err.getvalue())
        try:
            result = command.run(args)
        except CrucibleError as exc:
            return CommandRun(exit_code_for(exc), out.getvalue(), err.getvalue(), exc)
        except SystemExit as exc:
            raise ConformanceError(
                f"run(args) called sys.exit({exc.code!r}): return the exit status instead, "
                "so the CLI's error handling and in-process callers see it"
            ) from exc
    require(
        result is None or (isinstance(result, int) and not isinstance(result, bool)),
        f"run(args) must return None or an int exit status, got {type(result).__name__}",
    )
    status = int(result or 0)
    require(0 <= status <= 255, f"run(args) returned {status}: an exit status is 0..255")
    return CommandRun(status, out.getvalue(), err.getvalue())


def check_command(
    command: Any,
    argv: Sequence[str] = (),
    *,
    exit_code: int = 0,
    name: str = "command",
    timeout: float = 120.0,
) -> CommandRun:
    """Configure ``command`` on a fresh parser, run it with ``argv``, check the rules.

    ``name`` is the subcommand's name (used in ``prog``); ``exit_code`` the
    status this ``argv`` must give (2 for a usage mistake). Returns the
    :class:`CommandRun` with captured stdout and stderr.
    """
    require(
        isinstance(command, Command),
        "a command needs configure(parser) and run(args) (crucible_core.contracts.Command)",
    )
    parser = argparse.ArgumentParser(prog=f"crucible {name}")
    with Calls(timeout) as calls:
        calls(
            "configure(parser)",
            "configure declares arguments on an argparse parser",
            command.configure,
            parser,
        )
        calls("the parser's --help", "the command's help renders", parser.format_help)
        call = f"run({list(argv)!r})"
        rule = (
            "a command returns its exit status or raises a crucible_core.errors error "
            "(anything else reaches the user as a traceback)"
        )
        outcome = calls(call, rule, _run, command, parser, list(argv))
    if outcome.error is not None:
        require(
            "\n" not in outcome.error.message,
            f"{call} raised {type(outcome.error).__name__} with a multi-line message; the CLI "
            "prints one line (put advice in hint=)",
        )
    if outcome.status != exit_code:
        why = f" ({type(outcome.error).__name__}: {outcome.error})" if outcome.error else ""
        raise ConformanceError(
            f"{call} exited {outcome.status}{why}, expected {exit_code}; stderr: "
            f"{outcome.stderr.strip()[-500:]!r}"
        )
    return outcome

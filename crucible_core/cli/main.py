"""Entry point of the ``crucible`` command.

Start-up stays cheap: only the command being run is imported and configured;
the others contribute one help line each from their registration. Every
:class:`~crucible_core.errors.CrucibleError` is printed as ``error: ...`` plus
a hint and mapped to its exit status (:data:`crucible_core.errors.ERROR_TABLE`);
a user mistake never prints a traceback (``CRUCIBLE_DEBUG=1`` shows one).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from crucible_core import __version__

__all__ = ["build_parser", "main"]

_DESCRIPTION = """\
Run LLM fine-tuning and inference through pluggable backends.

Most commands accept --json for machine-readable output.
Environment: CRUCIBLE_HOME (state directory, default ./.crucible),
CRUCIBLE_PLUGINS / CRUCIBLE_DISABLE_PLUGINS (comma-separated plugin names),
CRUCIBLE_STRICT_PLUGINS=1 (a broken plugin is an error, not a warning),
CRUCIBLE_CACHE_DIR (the index of plugin commands listed here).
Exit status: 0 ok, 1 runtime failure, 2 usage or configuration error,
3 plugin failure (strict mode), 4 not found, 130 interrupted.
"""


def _wide_formatter(prog: str) -> argparse.HelpFormatter:
    # Wide enough that each command summary stays on one line.
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=16, width=100)


def _command_name(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def _builtin_commands() -> dict[str, tuple[str, str, str]]:
    # Read without pluggy: keep `crucible --help` and built-in commands fast.
    from crucible_core.cli.commands import BUILTIN_COMMANDS as table

    return {name: (factory, summary, "core") for name, (factory, summary) in table.items()}


def _all_commands() -> dict[str, tuple[str, str, str]]:
    from crucible_core.plugins import get_host

    return {
        name: (reg.factory if isinstance(reg.factory, str) else "", reg.summary, reg.plugin)
        for name, reg in get_host().registrations("command").items()
    }


def _indexed_commands() -> tuple[dict[str, tuple[str, str, str]], list[str]]:
    # Plugin commands from the index the last plugin-loading run wrote: no plugin is imported.
    from crucible_core import _command_index

    found, missing = _command_index.indexed_commands()
    return {name: ("", summary, plugin) for name, summary, plugin in found}, missing


def _make_command(obj: Any, name: str) -> Any:
    """The command a registration's factory builds (``factory()``; a built object as it is)."""
    built = obj if _is_command(obj) and not isinstance(obj, type) else obj()
    if not _is_command(built):
        from crucible_core.errors import PluginError

        raise PluginError(
            f"command {name!r}: its factory returned {type(built).__name__}, "
            "which has no configure(parser) and run(args)",
            hint="register a class (or a function returning an object) with both methods",
        )
    return built


def _is_command(obj: Any) -> bool:
    return callable(getattr(obj, "configure", None)) and callable(getattr(obj, "run", None))


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    """The top-level parser; only ``selected``'s arguments are configured.

    Plugins are loaded only when ``selected`` is not a built-in command. The
    help (``selected`` None) lists plugin commands from the command index
    (:mod:`crucible_core._command_index`) without importing any plugin.
    """
    commands = _builtin_commands()
    plugin_commands = selected is not None and selected not in commands
    epilog = None
    if plugin_commands:
        commands = _all_commands()
        if selected not in commands:
            from crucible_core.plugins import get_host

            if selected in get_host().conflicts("command"):
                get_host().get("command", selected)  # raises, naming every plugin claiming it
    elif selected is None:
        indexed, missing = _indexed_commands()
        commands = {**indexed, **commands}  # a built-in name always means the built-in
        if missing:
            epilog = (
                f"Plugins whose commands are not indexed yet: {', '.join(missing)}; "
                "`crucible plugins` loads them and lists their commands here."
            )
    parser = argparse.ArgumentParser(
        prog="crucible",
        description=_DESCRIPTION,
        epilog=epilog,
        formatter_class=_wide_formatter,
    )
    parser.add_argument("--version", action="version", version=f"crucible {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in sorted(commands):
        factory, summary, plugin = commands[name]
        cmd_parser = sub.add_parser(
            name,
            help=summary + ("" if plugin == "core" else f" [{plugin}]"),
            description=summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == selected:
            if plugin_commands:
                from crucible_core.plugins import get_host

                command = _make_command(get_host().get("command", name).load(), name)
            else:
                from crucible_core._imports import import_object

                command = _make_command(import_object(factory), name)
            command.configure(cmd_parser)
            cmd_parser.set_defaults(_run=command.run)
    return parser


def _refresh_command_index() -> None:
    """Record the installed plugins' commands for the next ``--help``, if plugins were loaded."""
    plugins = sys.modules.get("crucible_core.plugins")
    host = None if plugins is None else plugins.current_host()
    if host is None or not host.autoloaded:
        return
    from crucible_core import _command_index

    _command_index.write(host)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_command_name(args_list))
        args = parser.parse_args(args_list)
        run = getattr(args, "_run", None)
        if run is None:
            parser.print_help()
            return 0 if not args_list else 2
        try:
            result = run(args)
        finally:
            _refresh_command_index()
        return int(result or 0)
    except KeyboardInterrupt:
        from crucible_core.errors import EXIT_INTERRUPTED

        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except Exception as exc:
        # The error tree is imported only when something failed: `--help` never needs it.
        from crucible_core.errors import CrucibleError, exit_code_for

        if not isinstance(exc, CrucibleError) or os.environ.get("CRUCIBLE_DEBUG"):
            raise
        from crucible_core.cli.output import print_error

        print_error(exc.message, exc.hint)
        return exit_code_for(exc)


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()

"""Crucible's own registrations, made through the same hooks as any plugin.

This module is the built-in plugin ``core``: keeping built-ins on the public
hooks means the hook API is exercised every day. The command table
(:mod:`crucible_core.cli.commands`) is also read directly by the CLI, so that
``crucible --help`` and built-in commands start without loading any plugin.
"""

from __future__ import annotations

from typing import Any

from crucible_core.cli.commands import BUILTIN_COMMANDS
from crucible_core.hookspecs import hookimpl


@hookimpl
def register_commands(register: Any) -> None:
    for name, (factory, summary) in BUILTIN_COMMANDS.items():
        register(name, factory, summary=summary)

"""The commands core ships, as a plain table (no pluggy: read at start-up)."""

from __future__ import annotations

#: name -> (factory, one-line summary) of the commands core ships.
BUILTIN_COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": ("crucible_core.cli.plugins_cmd:command", "List plugins and what they register"),
    "ir": ("crucible_core.cli.ir_cmd:command", "Validate IR files, print schemas and defaults"),
    "doctor": (
        "crucible_core.cli.doctor_cmd:command",
        "Check the environment and each plugin's health",
    ),
}

"""crucible-registry's hooks: the ``crucible models`` command."""

from __future__ import annotations

from crucible_core import RegisterCommand, hookimpl


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register(
        "models",
        "crucible_registry.cli:ModelsCommand",
        summary="model registry: register run weights as versions; aliases, rollback, tags",
    )

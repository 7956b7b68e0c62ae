"""crucible-registry's hooks: the ``crucible models`` command and the ``/v1/models`` API routes."""

from __future__ import annotations

from crucible_core import RegisterApiRoute, RegisterCommand, hookimpl


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register(
        "models",
        "crucible_registry.cli:ModelsCommand",
        summary="model registry: register run weights as versions; aliases, rollback, tags",
    )


@hookimpl
def register_api_routes(register: RegisterApiRoute) -> None:
    register(
        "models",
        "crucible_registry.api:router",
        summary="the model registry over crucible serve: versions, aliases, gates, history",
        prefix="/v1/models",
    )

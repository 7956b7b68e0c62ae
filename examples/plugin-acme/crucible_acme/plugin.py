from typing import Any

from crucible_core import (
    RegisterCommand,
    RegisterDataset,
    RegisterExecutor,
    RegisterStage,
    hookimpl,
)


@hookimpl
def register_stages(register: RegisterStage) -> None:
    register("acme.dedupe", "crucible_acme.stages:DedupeStage", summary="Drop repeated rows")


@hookimpl
def register_datasets(register: RegisterDataset) -> None:
    register(
        "acme-lines",
        "crucible_acme.source:LinesSource",
        summary="A text file, one row per line",
        schemes=["lines"],
    )


@hookimpl
def register_executors(register: RegisterExecutor) -> None:
    register("acme-inline", "crucible_acme.executor:InlineExecutor", summary="Run in the caller")


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register("acme-count", "crucible_acme.cli:CountCommand", summary="Count a file's rows")


@hookimpl
def on_event(event: Any) -> None:
    from crucible_acme.sink import record

    record(event)

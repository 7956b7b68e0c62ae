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
    register("acme.dedupe", "acme_plugin.stages:DedupeStage", summary="Drop repeated rows")


@hookimpl
def register_datasets(register: RegisterDataset) -> None:
    register(
        "acme-lines",
        "acme_plugin.source:LinesSource",
        summary="A text file, one row per line",
        schemes=["lines"],
    )


@hookimpl
def register_executors(register: RegisterExecutor) -> None:
    register("acme-inline", "acme_plugin.executor:InlineExecutor", summary="Run in the caller")


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register("acme-count", "acme_plugin.cli:CountCommand", summary="Count a file's rows")


@hookimpl
def on_event(event: Any) -> None:
    from acme_plugin.sink import record

    record(event)

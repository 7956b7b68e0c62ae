"""Hook implementations of crucible-datasets: registrations only, nothing heavy imported.

Every factory is a ``"module:attr"`` string resolved on first use; the tables
live in :mod:`crucible_datasets.registry`, which the pluggy-free library code
reads too.
"""

from __future__ import annotations

from typing import Any

from crucible_core.hookspecs import hookimpl
from crucible_datasets.registry import (
    COMMANDS,
    METRICS,
    RENDERERS,
    REWARDS,
    SAMPLES,
    SOURCES,
    STAGES,
)


@hookimpl
def register_datasets(register: Any) -> None:
    for source in SOURCES:
        register(
            source.name,
            source.factory,
            summary=source.summary,
            kind="source",
            schemes=list(source.schemes),
            suffixes=list(source.suffixes),
        )
    for sample in SAMPLES:
        register(
            f"sample:{sample.name}",
            "crucible_datasets.sources:SampleSource",
            summary=sample.summary,
            kind="sample",
            dataset_kind=sample.kind,
            rows=sample.rows,
            preset=sample.preset,
            uri=f"sample:{sample.name}",
        )


@hookimpl
def register_renderers(register: Any) -> None:
    for name, (factory, summary) in RENDERERS.items():
        register(name, factory, summary=summary)


@hookimpl
def register_metrics(register: Any) -> None:
    for name, (factory, summary) in METRICS.items():
        register(name, factory, summary=summary)


@hookimpl
def register_rewards(register: Any) -> None:
    for name, (factory, summary) in REWARDS.items():
        register(name, factory, summary=summary)


@hookimpl
def register_stages(register: Any) -> None:
    for name, (factory, summary) in STAGES.items():
        register(name, factory, summary=summary)


@hookimpl
def register_commands(register: Any) -> None:
    for name, (factory, summary) in COMMANDS.items():
        register(name, factory, summary=summary)

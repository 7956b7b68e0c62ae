"""Crucible's own registrations, made through the same hooks as any plugin.

This module is the built-in plugin ``core``: keeping built-ins on the public
hooks means the hook API is exercised every day. The command table
(:mod:`crucible_core.cli.commands`) is also read directly by the CLI, so that
``crucible --help`` and built-in commands start without loading any plugin.
"""

from __future__ import annotations

from crucible_core.cli.commands import BUILTIN_COMMANDS
from crucible_core.hookspecs import (
    RegisterArtifactStore,
    RegisterCommand,
    RegisterExecutor,
    RegisterStage,
    hookimpl,
)


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    for name, (factory, summary) in BUILTIN_COMMANDS.items():
        register(name, factory, summary=summary)


@hookimpl
def register_executors(register: RegisterExecutor) -> None:
    register(
        "inline",
        "crucible_core.pipeline.executors:InlineExecutor",
        summary="Run each callable at once in the calling thread",
    )
    register(
        "thread",
        "crucible_core.pipeline.executors:ThreadExecutor",
        summary="Run callables in a thread pool (max_workers)",
    )
    register(
        "process",
        "crucible_core.pipeline.executors:ProcessExecutor",
        summary="Run picklable callables in a pool of spawned processes (max_workers)",
    )


@hookimpl
def register_artifact_stores(register: RegisterArtifactStore) -> None:
    register(
        "local",
        "crucible_core.records.artifacts:LocalArtifactStore",
        summary="Content-addressed files under $CRUCIBLE_HOME/artifacts (root)",
    )


@hookimpl
def register_stages(register: RegisterStage) -> None:
    register(
        "train.loop",
        "crucible_core.train.stages:TrainLoopStage",
        summary="Train the job's model on the tokenized data (pipelined, resumable, budgeted)",
    )
    register(
        "train.evaluate",
        "crucible_core.train.stages:EvaluateStage",
        summary="Loss and perplexity of the trained weights on the validation split",
    )
    register(
        "train.save",
        "crucible_core.train.stages:SaveStage",
        summary="Save the final weights for sampling, store them by content, record lineage",
    )
    register(
        "train.log_metrics",
        "crucible_core.train.stages:LogMetricsStage",
        summary="Write metrics.json and the manifest's training record",
    )

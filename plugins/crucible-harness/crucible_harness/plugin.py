"""crucible-harness's hooks: the ``crucible eval``, ``eval-compare`` and ``experiment`` commands,
and the ``mc_logprob`` metric (multiple choice by option log-probability)."""

from __future__ import annotations

from crucible_core import RegisterCommand, RegisterMetric, hookimpl


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register(
        "eval",
        "crucible_harness.cli:EvalCommand",
        summary="score a run's weights on a dataset with registered metrics, with confidence "
        "intervals; compare two evaluations for significance",
    )
    register(
        "eval-compare",
        "crucible_harness.cli:EvalCompareCommand",
        summary="compare two evaluations: the right significance test, effect sizes, "
        "a Markdown report",
    )
    register(
        "experiment",
        "crucible_harness.cli:ExperimentCommand",
        summary="a grid of training runs (+ evaluation): validate it, run its cells through "
        "the queue (resumable, budgeted), show their status, write reports",
    )


@hookimpl
def register_metrics(register: RegisterMetric) -> None:
    register(
        "mc_logprob",
        "crucible_harness.choice:mc_logprob",
        summary="Multiple-choice accuracy by the log-probability of each option "
        "(crucible eval scores the options through the backend's forward pass)",
    )

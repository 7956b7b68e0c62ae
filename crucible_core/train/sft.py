"""The supervised fine-tuning recipe, top to bottom: prepare -> session -> loop -> evaluate -> save.

:func:`run_sft` is the whole workflow of a TrainingJob, run inside a
:class:`~crucible_core.pipeline.scope.RunScope` (which records the run's
start, each step as a stage, and its end). Typed values pass between the
steps: :class:`~crucible_core.train.prepare.PreparedData` (the data, read
once), :class:`~crucible_core.train.steps.Trained` (the loop's result), the
evaluation, the sampler checkpoint, and the
:class:`~crucible_core.train.steps.TrainingOutcome` the caller gets. One
backend per run (the scope creates it once), one session, closed on every
path by :func:`open_session`. The steps live in
:mod:`crucible_core.train.steps`, shared with the stage adapters and with the
recipes of other workflows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator

from crucible_core.contracts import TrainingBackend, TrainingSession
from crucible_core.ir.training import TrainingJob
from crucible_core.pipeline.scope import RunScope
from crucible_core.train.loop import LoopState
from crucible_core.train.prepare import PreparedData
from crucible_core.train.steps import (
    TrainingOutcome,
    evaluate,
    finish,
    prepare_step,
    save_final,
    train_step,
)

__all__ = ["STEPS", "open_session", "run_sft"]

#: The recipe's steps, in order, as (step name, what it runs): each is recorded as a stage.
STEPS: tuple[tuple[str, str], ...] = (
    ("prepare", "data.load + data.tokenize"),
    ("train", "train.loop"),
    ("evaluate", "train.evaluate"),
    ("save", "train.save"),
    ("log_metrics", "train.log_metrics"),
)


def run_sft(
    scope: RunScope,
    job: TrainingJob,
    *,
    prepared: PreparedData | None = None,
    resume: LoopState | None = None,
    window: int = 2,
) -> TrainingOutcome:
    """Train ``job`` in ``scope``'s run directory; ``prepared`` skips reading the data again."""
    start = time.monotonic()
    backend: TrainingBackend = scope.backend()
    data = prepare_step(scope, job, prepared)
    with open_session(backend, job, scope) as session:
        with scope.step("train", "train.loop") as ctx:
            trained = train_step(ctx, session, job, data, backend.capabilities(), resume, window)
        with scope.step("evaluate", "train.evaluate") as ctx:
            evaluation = evaluate(ctx, session, job, data, before=trained.sampled_before)
        with scope.step("save", "train.save") as ctx:
            sampler = save_final(ctx, session, job, trained.result)
    return finish(scope, trained, evaluation, sampler, start, job)


@contextlib.contextmanager
def open_session(
    backend: TrainingBackend, job: TrainingJob, scope: RunScope
) -> Generator[TrainingSession]:
    """A session of ``job`` writing under the run directory, closed on every path."""
    session = backend.create_session(job, run_dir=scope.run_dir)
    try:
        yield session
    finally:
        session.close()

"""One experiment cell as a worker job: a training run, then its evaluation.

A cell is a ``custom`` job whose target is :func:`run_cell`, so any
``crucible worker`` (in its threads, or through an executor such as ``ray``)
runs it without knowing about experiments. The training part is the
``training_run`` handler itself (:func:`crucible_core.train.run.run_training_job`,
which resumes from the run's newest checkpoint when a cell is reclaimed
after its worker died); the evaluation part is
:func:`crucible_harness.evaluate.evaluate` on the run's final weights with
the experiment's :class:`~crucible_core.ir.CellEval`, written as
``eval-<id>.json`` in the cell's run directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["TARGET", "run_cell"]

#: The ``custom`` job target of every cell.
TARGET = "crucible_harness.cell:run_cell"


def run_cell(
    ctx: Any, job: Mapping[str, Any], evaluation: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Train ``job`` (a TrainingJob as data) under the cell's job id, then evaluate it.

    Returns ``{"training": <run outcome>, "eval": {"eval_id", "scores"}}``
    (``eval`` is None without an evaluation); the job's result in the queue.
    """
    import msgspec

    from crucible_core.ir.codec import convert
    from crucible_core.ir.experiment import CellEval
    from crucible_core.train.run import run_training_job

    training_job = msgspec.structs.replace(ctx.job, kind="training_run", payload=dict(job))
    outcome = run_training_job(training_job, ctx)
    if evaluation is None:
        return {"training": outcome, "eval": None}
    spec = convert(dict(evaluation), CellEval)
    if ctx.cancel.is_set():
        from crucible_core.errors import Cancelled

        raise Cancelled(f"cell {ctx.job_id!r}: stopped before its evaluation")
    from crucible_harness.evaluate import evaluate, resolve_target

    ctx.emit("experiment.cell_eval", dataset=spec.dataset, metrics=list(spec.metrics))
    result = evaluate(
        resolve_target(ctx.run_dir.as_posix()),
        spec.dataset,
        list(spec.metrics),
        n=spec.n,
        preset=spec.preset,
        extract=spec.extract,
        host=ctx.host,
    )
    scores = {m.name: m.score for m in result.metrics}
    ctx.emit("eval.metric", eval_id=result.eval_id, metrics=scores)
    return {"training": outcome, "eval": {"eval_id": result.eval_id, "scores": scores}}

"""Held-out scores from samples: what the model writes for validation prompts, scored.

A loss says the model got more likely; it does not say the model can do the
task. When ``validation_spec.metrics`` names a metric in
:data:`SAMPLED_METRICS` (``exact_match``, ``token_f1``, ``bleu``,
``rouge_l``, ``gsm8k_accuracy``: registered by crucible-datasets as
``metric(predictions, references) -> {name: score, ...}``), the training
workflow samples a greedy completion (temperature 0, so the score is a
function of the weights) for each held-out prompt, scores the completions
against the rows' answers, on a schedule: before the first step (the
``train`` step, skipped on resume), every ``validation_spec.every_n_steps``
steps (the loop saves the weights for sampling right after that step's
optimizer step, so later steps already in flight do not leak in; see
:func:`score_step`), and after the last (``evaluate``).

Each score is an ``eval.metric`` event (``split = "validation"``, ``when`` =
``before``/``step``/``after``, the ``step``, and the ``checkpoint``: the URI
of the state checkpoint the run kept at that step, if any) and a
``sampled_evals`` entry in the manifest, so a curve of task accuracy against
step (and checkpoint) sits beside the loss curve.

Only validation rows are scored (``dataset_spec.validation_ratio`` splits
them off before training; ``validation_spec.max_samples`` caps them), so the
score measures rows the model was never trained on. The prompts and
reference answers come from ``data.tokenize`` (``validation_prompts``,
rendered with the training template; see :mod:`crucible_datasets.prompts`).

Weights are sampled through the training contract's
``save_weights_for_sampler`` (so any backend works) under the names
``eval-before``, ``eval-step-NNNNNN`` and ``eval-after``, and deleted after
scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec

from crucible_core.contracts import Future, Sampler, StageContext, TrainingSession
from crucible_core.errors import ConfigError
from crucible_core.ir.backend import Completion, Prompt, SamplingParams
from crucible_core.ir.codec import to_builtins
from crucible_core.ir.training import TrainingJob

if TYPE_CHECKING:
    from crucible_core.plugins import PluginHost

__all__ = [
    "SAMPLED_METRICS",
    "SampledEval",
    "SampledExample",
    "evaluate_samples",
    "sample_greedy",
    "sampled_metric_names",
    "score",
    "score_step",
]

#: Metric names computed from greedy samples of held-out prompts; each names a metric
#: registered under the same name whose result holds a score of that name.
SAMPLED_METRICS: frozenset[str] = frozenset(
    {"exact_match", "token_f1", "bleu", "rouge_l", "gsm8k_accuracy"}
)
#: Longest completion sampled for one prompt: generous for short answers, bounded in time.
_MAX_NEW_TOKENS = 256
#: How many (input, output, reference) triples a result keeps for people to read.
_KEEP_EXAMPLES = 3


class SampledExample(msgspec.Struct, kw_only=True):
    """One held-out prompt, what the model wrote, and the answer."""

    input: str
    output: str
    reference: str


class SampledEval(msgspec.Struct, kw_only=True):
    """Scores of one sampled evaluation, on ``examples`` held-out rows."""

    scores: dict[str, float]
    examples: int
    samples: list[SampledExample] = []


def sampled_metric_names(job: TrainingJob) -> list[str]:
    """The names in ``validation_spec.metrics`` this module computes, in the job's order."""
    names = job.validation_spec.metrics if job.validation_spec else []
    return [name for name in names if name in SAMPLED_METRICS]


def _metric(name: str, host: PluginHost | None) -> Callable[..., Mapping[str, float]]:
    if host is None:
        from crucible_core.plugins import get_host

        host = get_host()
    return cast(Callable[..., Mapping[str, float]], host.get("metric", name).load())


def _max_tokens(prompt_len: int, reference_len: int, context: int | None) -> int:
    want = min(_MAX_NEW_TOKENS, 2 * reference_len + 8)
    if context is not None:
        want = min(want, context - prompt_len)
    return max(1, want)


def evaluate_samples(
    session: TrainingSession,
    job: TrainingJob,
    prompts: Sequence[Mapping[str, Any]],
    *,
    name: str,
    deadline_s: float,
    host: PluginHost | None = None,
    discard: bool = False,
    saved: Future[Sampler] | None = None,
) -> SampledEval | None:
    """Score greedy samples of the session's current weights on ``prompts``.

    ``prompts`` are ``data.tokenize``'s ``validation_prompts``. Returns None
    when the job names no sampled metric or there is no prompt to score.
    Metrics come from ``host`` (default: the process's plugin host). With
    ``discard``, the backend deletes the weights saved for sampling afterwards
    (``TrainingSession.delete_checkpoint``): they are a copy made only to score.
    ``saved`` is a ``save_weights_for_sampler`` already submitted (the loop
    submits it right after the step it scores); by default one is submitted now.
    """
    names = sampled_metric_names(job)
    if not names or not prompts:
        return None
    metrics = {metric: _metric(metric, host) for metric in names}
    if saved is None:
        saved = session.save_weights_for_sampler(name)
    sampler = saved.result(timeout=deadline_s)
    try:
        outputs = _sample_all(sampler, job, prompts, deadline_s)
    finally:
        close = getattr(sampler, "close", None)
        if callable(close):
            close()
        if discard and sampler.checkpoint is not None:
            session.delete_checkpoint(sampler.checkpoint)
    references = [str(p["reference"]) for p in prompts]
    scores: dict[str, float] = {}
    for metric, fn in metrics.items():
        result = fn(outputs, references)
        if metric not in result:
            raise ConfigError(
                f"validation_spec.metrics: metric {metric!r} returned no {metric!r} score",
                hint="a sampled metric must return a score under its own name",
            )
        scores[metric] = float(result[metric])
    kept = [
        SampledExample(input=str(p.get("input", "")), output=out, reference=ref)
        for p, out, ref in zip(prompts, outputs, references, strict=True)
    ][:_KEEP_EXAMPLES]
    return SampledEval(scores=scores, examples=len(prompts), samples=kept)


def _sample_all(
    sampler: Sampler,
    job: TrainingJob,
    prompts: Sequence[Mapping[str, Any]],
    deadline_s: float,
) -> list[str]:
    return sample_greedy(
        sampler, prompts, context=job.model_spec.max_seq_len, deadline_s=deadline_s
    )


def sample_greedy(
    sampler: Sampler,
    prompts: Sequence[Mapping[str, Any]],
    *,
    context: int | None,
    deadline_s: float,
) -> list[str]:
    """One greedy completion (temperature 0) per prompt, in order.

    ``prompts`` are :func:`crucible_datasets.prompts.eval_prompts` rows (``tokens``,
    ``reference``). Every request is submitted before any result is read, so a
    backend that batches or pipelines gets the whole set at once. A completion is
    at most twice the reference's length + 8 tokens (capped at 256 and by the
    ``context`` left after the prompt): enough for the answer, bounded in time.
    ``crucible eval`` (crucible-harness) samples through this function too.
    """
    tokenizer = sampler.tokenizer
    futures: list[Future[list[Completion]]] = []
    for p in prompts:
        tokens = [int(t) for t in cast(Sequence[Any], p["tokens"])]
        ref_len = len(tokenizer.encode(str(p["reference"])))
        params = SamplingParams(
            max_tokens=_max_tokens(len(tokens), ref_len, context), temperature=0.0
        )
        futures.append(sampler.sample(Prompt(tokens=tokens), params))
    return [f.result(timeout=deadline_s)[0].text for f in futures]


def score(
    ctx: StageContext,
    session: TrainingSession,
    job: TrainingJob,
    prompts: Sequence[Mapping[str, Any]],
    *,
    when: str,
    deadline_s: float,
    checkpoint: str | None = None,
    step: int | None = None,
    saved: Future[Sampler] | None = None,
) -> dict[str, Any] | None:
    """Run :func:`evaluate_samples` inside a training step, emit it, record it, return it.

    ``when`` is ``"before"``, ``"step"`` or ``"after"``; ``prompts`` are
    :attr:`~crucible_core.train.prepare.PreparedData.validation_prompts`;
    ``step`` defaults to the session's. The event is an ``eval.metric`` with
    ``split = "validation"``, ``when`` and ``checkpoint``; the manifest gets a
    ``sampled_evals`` entry.
    """
    from crucible_core.records.manifest import RunRecord, SampledEvalRecord

    # The run's context carries the run's plugin host (beyond the StageContext contract).
    host = cast("PluginHost | None", getattr(ctx, "host", None))
    step = session.step if step is None else step
    name = f"eval-step-{step:06d}" if when == "step" else f"eval-{when}"
    result = evaluate_samples(
        session,
        job,
        prompts,
        name=name,
        deadline_s=deadline_s,
        host=host,
        discard=True,
        saved=saved,
    )
    if result is None:
        return None
    ctx.emit(
        "eval.metric",
        step=step,
        split="validation",
        when=when,
        checkpoint=checkpoint,
        examples=result.examples,
        metrics=result.scores,
    )
    RunRecord(ctx.run_dir).record_sampled_eval(
        SampledEvalRecord(
            step=step,
            when=when,
            checkpoint=checkpoint,
            scores=result.scores,
            examples=result.examples,
        )
    )
    return cast(dict[str, Any], to_builtins(result))


def score_step(
    ctx: StageContext,
    session: TrainingSession,
    job: TrainingJob,
    prompts: Sequence[Mapping[str, Any]],
    *,
    deadline_s: float,
) -> Callable[[int, Future[Sampler], str | None], None] | None:
    """The loop's ``on_sampled`` callback: score the weights saved after a step.

    None when the job names no sampled metric or has no held-out prompt (the
    loop then saves nothing for sampling).
    """
    if not sampled_metric_names(job) or not prompts:
        return None

    def on_sampled(step: int, saved: Future[Sampler], checkpoint: str | None) -> None:
        score(
            ctx,
            session,
            job,
            prompts,
            when="step",
            deadline_s=deadline_s,
            checkpoint=checkpoint,
            step=step,
            saved=saved,
        )

    return on_sampled

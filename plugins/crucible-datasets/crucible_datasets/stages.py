"""The pipeline stages ``data.load`` and ``data.tokenize``.

Both read the TrainingJob from ``ctx.job.payload`` and use its ``dataset_spec``.

``data.load`` outputs::

    {"rows": [...], "train_rows": [...], "validation_rows": [...],
     "dataset_hash": "sha256:...", "skipped": int, "source": "jsonl:path",
     "kind": "chat", "columns": [...], "skip_reasons": [...]}

``train_rows``/``validation_rows`` split ``rows`` by ``dataset_spec.validation_ratio``
with the job's ``learning_config.seed`` (:func:`~crucible_datasets.splits.train_validation_split`).

``data.tokenize`` (after ``data.load``) gets the tokenizer from
``ctx.backend().get_tokenizer(job.model_spec)`` and outputs::

    {"train": [Datum, ...], "validation": [Datum, ...], "tokens": int,
     "template": "chatml", "template_hash": "sha256:...",
     "validation_tokens": int, "loss_tokens": float, "truncated": int, "dropped": int,
     "max_length": int | None, "packed": bool}

plus ``"validation_prompts"`` (:func:`crucible_datasets.prompts.eval_prompts`)
when ``validation_spec.metrics`` names a metric scored on generated text
(anything but ``loss``/``perplexity``): the held-out prompts and answers the
training workflow samples and scores before and after training.

A ``workflow = "distill"`` job gets prompts instead of Datums
(:func:`crucible_datasets.prompts.distill_prompts`): ``"prompts"`` (the
training rows') and ``"validation_prompts"`` (the validation rows'), with
``train``/``validation`` empty: the distillation recipe builds the Datums from
the teacher's completions. ``tokens`` counts the prompts' tokens.

A ``workflow = "dpo"`` job gets preference pairs instead
(:func:`~crucible_datasets.datums.render_pairs`): ``train`` and ``validation``
hold each pair as two Datums in a row, chosen then rejected (weights on the
completion tokens only), and ``"group": 2`` says so. A ``workflow = "rl"`` job
gets prompts instead of Datums: ``"prompts"`` and ``"validation_prompts"``
(:func:`crucible_datasets.prompts.eval_prompts` rows: ``tokens``,
``reference``, ``input``), ``"train": []``.

``tokens`` counts the training Datums' input tokens (one epoch). The length
limit is ``dataset_spec.max_length``, else ``model_spec.max_seq_len``.
Datum shift: ``model_input = tokens[:-1]``, ``target_tokens = tokens[1:]``,
``weights = weights[1:]`` (see :mod:`crucible_datasets.datums`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

from crucible_core.contracts import StageContext, Tokenizer
from crucible_core.errors import Cancelled, ConfigError
from crucible_core.ir import DatasetSpec, TrainingJob, convert

__all__ = ["DataLoadStage", "DataTokenizeStage", "training_job"]

#: Metrics computed from forward passes; every other name is scored on samples.
_LOSS_METRICS = frozenset({"loss", "eval_loss", "val_loss", "perplexity"})


def training_job(ctx: StageContext) -> TrainingJob:
    """The TrainingJob of the run (``ctx.job.payload``, validated)."""
    payload: Any = ctx.job.payload
    if isinstance(payload, TrainingJob):
        return payload
    if isinstance(payload, Mapping) and "dataset_spec" in payload:
        return convert(payload, TrainingJob)
    raise ConfigError(
        f"job {ctx.job_id}: the data stages need a training job, but the job's payload "
        "has no dataset_spec",
        hint="run data.load/data.tokenize as part of a training run",
    )


def _dataset_spec(ctx: StageContext) -> tuple[DatasetSpec, int]:
    payload: Any = ctx.job.payload
    if isinstance(payload, TrainingJob) or (
        isinstance(payload, Mapping) and "dataset_spec" in payload
    ):
        job = training_job(ctx)
        return job.dataset_spec, job.learning_config.seed
    dataset = ctx.experiment.dataset
    if dataset is not None:
        seed = ctx.options.get("seed", 0)
        return dataset, int(seed) if isinstance(seed, int) else 0
    return training_job(ctx).dataset_spec, 0  # raises the explanatory error


def _cancellable(rows: Iterable[Any], ctx: StageContext, every: int = 1000) -> Iterator[Any]:
    for i, row in enumerate(rows):
        if i % every == 0 and ctx.cancel.is_set():
            raise Cancelled(f"job {ctx.job_id}: cancelled while preparing data")
        yield row


def load_outputs(spec: DatasetSpec, seed: int, ctx: StageContext | None = None) -> dict[str, Any]:
    """What ``data.load`` returns, computed without a context (library use, ``crucible plan``)."""
    from crucible_datasets.hashing import dataset_hash
    from crucible_datasets.loading import read_dataset
    from crucible_datasets.splits import train_validation_split

    loaded = read_dataset(spec)
    train, validation = train_validation_split(loaded.rows, spec.validation_ratio, seed=seed)
    return {
        "rows": loaded.rows,
        "train_rows": train,
        "validation_rows": validation,
        "dataset_hash": dataset_hash(loaded.rows),
        "skipped": loaded.skipped,
        "source": loaded.source,
        "kind": loaded.kind,
        "columns": loaded.columns,
        "skip_reasons": loaded.skip_reasons,
    }


class DataLoadStage:
    """``data.load``: read the dataset, split off validation rows, hash the content."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: StageContext) -> dict[str, Any]:
        spec, seed = _dataset_spec(ctx)
        if ctx.cancel.is_set():
            raise Cancelled(f"job {ctx.job_id}: cancelled before loading data")
        out = load_outputs(spec, seed, ctx)
        ctx.emit(
            "data.loaded",
            rows=len(out["rows"]),
            train_rows=len(out["train_rows"]),
            validation_rows=len(out["validation_rows"]),
            skipped=out["skipped"],
            source=out["source"],
            dataset_hash=out["dataset_hash"],
        )
        return out


def tokenize_outputs(
    job: TrainingJob,
    tokenizer: Tokenizer,
    train_rows: Iterable[Mapping[str, Any]],
    validation_rows: Iterable[Mapping[str, Any]],
    ctx: StageContext | None = None,
) -> dict[str, Any]:
    """What ``data.tokenize`` returns, computed without a context."""
    from crucible_datasets.datums import TokenStats, render_datums
    from crucible_datasets.render import get_renderer

    spec = job.dataset_spec
    max_length = spec.max_length or job.model_spec.max_seq_len
    renderer = get_renderer(spec.template, tokenizer)
    if job.workflow == "distill":
        return _distill_prompt_outputs(job, train_rows, validation_rows, renderer, max_length)
    if job.workflow == "dpo":
        return _pair_outputs(job, tokenizer, train_rows, validation_rows, renderer, max_length)
    if job.workflow == "rl":
        return _rl_prompt_outputs(job, train_rows, validation_rows, renderer, max_length)
    held_out = list(validation_rows)  # read twice when samples are wanted
    validation_rows = held_out
    if ctx is not None:
        train_rows = _cancellable(train_rows, ctx)
        validation_rows = _cancellable(validation_rows, ctx)
    train_stats = TokenStats()
    train = render_datums(
        train_rows, tokenizer, spec, max_length=max_length, renderer=renderer, stats=train_stats
    )
    val_stats = TokenStats()
    validation = render_datums(
        validation_rows, tokenizer, spec, max_length=max_length, renderer=renderer, stats=val_stats
    )
    if not train:
        raise ConfigError(
            f"{spec.uri}: no training example has a token to learn from "
            f"({train_stats.rows} rows, {train_stats.dropped} dropped, "
            f"{train_stats.truncated} truncated)",
            hint="check train_on (assistant needs assistant messages) and max_length; "
            'train_on = "all" trains on every token',
        )
    out: dict[str, Any] = {
        "train": train,
        "validation": validation,
        "tokens": train_stats.tokens,
        "template": renderer.name,
        "template_hash": renderer.template_hash,
        "validation_tokens": val_stats.tokens,
        "loss_tokens": train_stats.loss_tokens,
        "truncated": train_stats.truncated + val_stats.truncated,
        "dropped": train_stats.dropped + val_stats.dropped,
        "max_length": max_length,
        "packed": spec.packing,
    }
    if _wants_samples(job):
        from crucible_datasets.prompts import eval_prompts

        limit = job.validation_spec.max_samples if job.validation_spec else None
        out["validation_prompts"] = eval_prompts(
            held_out, renderer, spec, limit=limit, max_length=max_length
        )
    return out


def _pair_outputs(
    job: TrainingJob,
    tokenizer: Tokenizer,
    train_rows: Iterable[Mapping[str, Any]],
    validation_rows: Iterable[Mapping[str, Any]],
    renderer: Any,
    max_length: int | None,
) -> dict[str, Any]:
    """``data.tokenize``'s output for preference pairs: (chosen, rejected) Datums in a row."""
    from crucible_datasets.datums import render_pairs

    spec = job.dataset_spec
    train_rows, validation_rows = list(train_rows), list(validation_rows)
    flat: dict[str, list[Any]] = {}
    for split, rows in (("train", train_rows), ("validation", validation_rows)):
        pairs = render_pairs(rows, tokenizer, spec, max_length=max_length, renderer=renderer)
        flat[split] = [datum for pair in pairs for datum in pair]
    if not flat["train"]:
        raise ConfigError(
            f"{spec.uri}: no preference pair has a completion token to learn from "
            f"({len(train_rows)} rows)",
            hint="check fields.chosen/fields.rejected, train_on and max_length",
        )
    return {
        "train": flat["train"],
        "validation": flat["validation"],
        "group": 2,
        "tokens": sum(d.num_tokens for d in flat["train"]),
        "template": renderer.name,
        "template_hash": renderer.template_hash,
        "validation_tokens": sum(d.num_tokens for d in flat["validation"]),
        "loss_tokens": sum(sum(d.loss_fn_inputs.weights or ()) for d in flat["train"]),
        "truncated": 0,
        "dropped": (len(train_rows) + len(validation_rows))
        - (len(flat["train"]) + len(flat["validation"])) // 2,
        "max_length": max_length,
        "packed": False,
    }


def _rl_prompt_outputs(
    job: TrainingJob,
    train_rows: Iterable[Mapping[str, Any]],
    validation_rows: Iterable[Mapping[str, Any]],
    renderer: Any,
    max_length: int | None,
) -> dict[str, Any]:
    """``data.tokenize``'s output for RL: prompts and reference answers, no Datums.

    A prompt leaves room for ``rl.max_tokens`` sampled tokens within the length limit.
    """
    from crucible_datasets.prompts import eval_prompts

    spec = job.dataset_spec
    room = None if max_length is None else max_length - job.rl_config.max_tokens
    if room is not None and room < 2:
        raise ConfigError(
            f"rl.max_tokens = {job.rl_config.max_tokens} leaves no room for a prompt within "
            f"the length limit of {max_length} tokens",
            hint="lower rl.max_tokens or raise dataset_spec.max_length / model_spec.max_seq_len",
        )
    train_rows = list(train_rows)
    train = eval_prompts(train_rows, renderer, spec, max_length=room)
    validation = eval_prompts(validation_rows, renderer, spec, max_length=room)
    if not train:
        raise ConfigError(
            f"{spec.uri}: no row gives a prompt with an answer to score ({len(train_rows)} rows)",
            hint="RL needs prompt/completion (or chat) rows whose last message is the answer; "
            "check dataset_spec.fields and the length limit",
        )
    return _prompt_result(train, validation, renderer, len(train_rows), max_length)


def _distill_prompt_outputs(
    job: TrainingJob,
    train_rows: Iterable[Mapping[str, Any]],
    validation_rows: Iterable[Mapping[str, Any]],
    renderer: Any,
    max_length: int | None,
) -> dict[str, Any]:
    """``data.tokenize``'s output for distillation: the prompts a teacher completes."""
    from crucible_datasets.prompts import distill_prompts

    spec = job.dataset_spec
    train_rows = list(train_rows)
    prompts = distill_prompts(train_rows, renderer, spec, max_length=max_length)
    held_out = distill_prompts(validation_rows, renderer, spec, max_length=max_length)
    if not prompts:
        raise ConfigError(
            f"{spec.uri}: no row has a prompt the teacher could complete ({len(train_rows)} rows)",
            hint="distillation needs chat or prompt/completion rows (fields.prompt/messages) "
            "whose prompt fits in max_length",
        )
    return _prompt_result(prompts, held_out, renderer, len(train_rows), max_length)


def _prompt_result(
    prompts: list[dict[str, Any]],
    held_out: list[dict[str, Any]],
    renderer: Any,
    rows: int,
    max_length: int | None,
) -> dict[str, Any]:
    """The output of a job that samples (RL, distillation): prompts, no Datums yet."""
    return {
        "train": [],
        "validation": [],
        "prompts": prompts,
        "validation_prompts": held_out,
        "tokens": sum(len(p["tokens"]) for p in prompts),
        "template": renderer.name,
        "template_hash": renderer.template_hash,
        "validation_tokens": sum(len(p["tokens"]) for p in held_out),
        "loss_tokens": 0.0,
        "truncated": 0,
        "dropped": rows - len(prompts),
        "max_length": max_length,
        "packed": False,
    }


def _wants_samples(job: TrainingJob) -> bool:
    """True if ``validation_spec.metrics`` names a metric scored on generated text."""
    names = job.validation_spec.metrics if job.validation_spec else []
    return any(name not in _LOSS_METRICS for name in names)


class DataTokenizeStage:
    """``data.tokenize``: render rows with the chat template and tokenize them into Datums."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: StageContext) -> dict[str, Any]:
        job = training_job(ctx)
        loaded = _load_output(ctx)
        if loaded is None:
            loaded = load_outputs(job.dataset_spec, job.learning_config.seed, ctx)
        tokenizer = cast(Tokenizer, ctx.backend().get_tokenizer(job.model_spec))
        out = tokenize_outputs(
            job,
            tokenizer,
            cast(list[Mapping[str, Any]], loaded["train_rows"]),
            cast(list[Mapping[str, Any]], loaded["validation_rows"]),
            ctx,
        )
        ctx.emit(
            "data.tokenized",
            train=len(out["train"]),
            validation=len(out["validation"]),
            tokens=out["tokens"],
            template=out["template"],
            truncated=out["truncated"],
            dropped=out["dropped"],
        )
        return out


def _load_output(ctx: StageContext) -> Mapping[str, Any] | None:
    """The ``data.load`` output among the stage's inputs, whatever the DAG named that stage."""
    inputs = ctx.inputs
    if "data.load" in inputs and "train_rows" in inputs["data.load"]:
        return inputs["data.load"]
    for value in inputs.values():
        if "train_rows" in value and "validation_rows" in value:
            return value
    return None

"""Generation-based evaluation of a run's weights (or a base model) on a dataset.

The path, reusing what training's held-out scoring uses so the two agree:

1. the target resolves to a backend, a model, a sampler checkpoint (None for
   base weights) and the chat template the run trained with
   (:func:`resolve_target`);
2. the dataset is read by crucible-datasets (a shipped ``sample:...`` works
   offline) and hashed by content; its rows become prompts and reference
   answers with the run's template (:func:`crucible_datasets.prompts.eval_prompts`);
3. one greedy completion per prompt
   (:func:`crucible_core.train.sampled_eval.sample_greedy`);
4. every metric scores the whole set (the number reported: corpus BLEU is
   corpus BLEU) and each example alone (the per-example scores a bootstrap
   interval and a paired significance test need);
5. the result is written as ``eval-<id>.json`` in the run directory (or
   ``$CRUCIBLE_HOME/evals`` for a base model) and linked in lineage:
   ``eval:<id>`` --evaluated_on--> ``dataset:<content hash>``, and
   --derived_from--> the run; ``run.start``/``run.end`` events frame it for
   the plugins observing events (OpenLineage, MLflow, OpenTelemetry sinks).

Answer extraction: a GSM8K-style dataset (preset ``gsm8k``) compares final
numbers under ``exact_match`` (the worked solution is not what is scored),
an MMLU-style one (preset ``mmlu``) the chosen letters.

Two metrics replace step 3: ``mc_logprob`` picks each multiple-choice answer
by the log-probability of every option through a training session's
``forward`` (:mod:`crucible_harness.choice`), and ``pass_at_k`` samples
``samples`` completions per problem and runs them against the problem's
tests in a sandbox (:mod:`crucible_harness.code`; reported as ``pass@1`` and
``pass@<samples>``). They score differently from the text metrics, so one
evaluation uses one kind.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.codec import convert
from crucible_core.ir.common import BackendRef
from crucible_core.ir.training import DatasetSpec, ModelSpec, TrainingJob

__all__ = [
    "CODE_METRICS",
    "EVAL_SCHEMA_VERSION",
    "LOGPROB_METRICS",
    "EvalExample",
    "EvalResult",
    "MetricScore",
    "Target",
    "evaluate",
    "read_eval",
    "resolve_target",
]

EVAL_SCHEMA_VERSION = "1"
#: Seconds allowed for one completion (a stuck backend fails the evaluation, not hangs it).
_DEADLINE_S = 600.0
#: Metrics scored from option log-probabilities rather than generated text.
LOGPROB_METRICS: frozenset[str] = frozenset({"mc_logprob"})
#: Metrics scored by running sampled code against tests.
CODE_METRICS: frozenset[str] = frozenset({"pass_at_k"})


class MetricScore(msgspec.Struct, frozen=True, kw_only=True):
    """One metric: the corpus score, the per-example mean and its bootstrap interval."""

    name: str
    score: float
    mean: float
    low: float
    high: float
    confidence: float
    method: str


class EvalExample(msgspec.Struct, frozen=True, kw_only=True):
    """One prompt, what the model wrote, the answer, and each metric's score of it alone."""

    input: str
    output: str
    reference: str
    scores: dict[str, float]


class EvalResult(msgspec.Struct, frozen=True, kw_only=True):
    """``eval-<id>.json``: one evaluation, enough to compare it with another."""

    schema_version: str = EVAL_SCHEMA_VERSION
    eval_id: str
    created_at: str
    target: str
    run_id: str | None
    backend: str
    model: str
    checkpoint: str | None
    dataset: str
    dataset_hash: str
    template: str
    template_hash: str | None
    extract: str | None
    metrics: list[MetricScore]
    examples: list[EvalExample]
    seconds: float
    #: Completions sampled per prompt (pass@k's n; 1 for everything else).
    samples: int = 1

    def per_example(self, metric: str) -> list[float]:
        """Each example's score under ``metric`` (NotFound if it was not computed)."""
        if not any(m.name == metric for m in self.metrics):
            raise NotFound(
                f"evaluation {self.eval_id} has no metric {metric!r}",
                hint="it has: " + ", ".join(m.name for m in self.metrics),
            )
        return [e.scores[metric] for e in self.examples]


@dataclass(frozen=True)
class Target:
    """What to evaluate: weights on a backend, and how prompts are rendered for them."""

    label: str
    backend: BackendRef
    model: ModelSpec
    checkpoint: CheckpointRef | None
    template: str | None
    run_dir: Path | None
    #: The run's TrainingJob (plain data), to open a session for log-probability scoring.
    job: Mapping[str, Any] | None = None
    #: The state checkpoint holding the weights evaluated (None: base weights).
    state: CheckpointRef | None = None
    #: Why log-probability scoring cannot load these weights (None: it can).
    state_error: str | None = None


def resolve_target(
    ref: str, *, base: bool = False, backend: str | None = None, template: str | None = None
) -> Target:
    """The :class:`Target` ``ref`` names.

    With ``backend``, ``ref`` is a model name on that backend (its base weights).
    Otherwise ``ref`` is a run (id, directory, ``models:/...``) or a checkpoint
    directory inside one, as ``crucible sample`` takes; ``base`` evaluates that
    run's base model (its weights before training) with the same template.
    ``template`` overrides the run's.
    """
    if backend is not None:
        return Target(
            label=f"{backend}:{ref}",
            backend=BackendRef(name=backend),
            model=ModelSpec(name=ref),
            checkpoint=None,
            template=template,
            run_dir=None,
        )
    from crucible_core.cli.runref import expand_ref, find_run
    from crucible_core.cli.sample_cmd import resolve_sampler

    run_dir, manifest = find_run(ref)
    state: CheckpointRef | None = None
    state_error: str | None = None
    if base:
        backend_ref = convert(manifest.get("backend") or {"name": "local"}, BackendRef)
        model_raw = manifest.get("model")
        if not isinstance(model_raw, dict):
            raise ConfigError(f"{run_dir}: the manifest records no model", hint="a training run?")
        model = convert(cast(dict[str, Any], model_raw), ModelSpec)
        checkpoint = None
    else:
        backend_ref, model, checkpoint = resolve_sampler(ref)
        state, state_error = _state_of(expand_ref(ref), run_dir, manifest)
    if template is None:
        job = manifest.get("training_job") or {}
        spec = cast(dict[str, Any], job).get("dataset_spec") or {}
        template = cast(dict[str, Any], spec).get("template")
    label = run_dir.name + (" (base model)" if base else "")
    return Target(
        label=label,
        backend=backend_ref,
        model=model,
        checkpoint=checkpoint,
        template=template,
        run_dir=run_dir,
        job=cast("dict[str, Any] | None", manifest.get("training_job")),
        state=state,
        state_error=state_error,
    )


def _state_of(
    ref: str, run_dir: Path, manifest: Mapping[str, Any]
) -> tuple[CheckpointRef | None, str | None]:
    """The state checkpoint with the weights ``ref`` names, or why there is none."""
    given = Path(ref).expanduser()
    raw = manifest.get("last_checkpoint")
    if given.exists() and given.resolve() != run_dir.resolve():
        listed = [
            convert(c["ref"], CheckpointRef)
            for c in cast(list[dict[str, Any]], manifest.get("checkpoints") or [])
        ]
        for c in listed:
            if c.uri == given.resolve().as_uri():
                return c, None
        return None, (
            f"{given} is sampler weights; scoring options loads a state checkpoint "
            f"(pass the run {run_dir.name}, or one of its state checkpoints)"
        )
    if raw is None:
        return None, f"run {run_dir.name} records no state checkpoint"
    return convert(raw, CheckpointRef), None


def _extractor(preset: str | None, extract: str) -> tuple[str | None, Callable[[str], str]]:
    from crucible_datasets.metrics import extract_choice, extract_final_number

    if extract == "auto":
        extract = {"gsm8k": "number", "mmlu": "choice"}.get(preset or "", "none")
    if extract == "number":

        def number(text: str) -> str:
            value = extract_final_number(text)
            return "" if value is None else format(value.normalize(), "f")

        return "number", number
    if extract == "choice":
        return "choice", lambda text: extract_choice(text) or ""
    if extract == "none":
        return None, lambda text: text
    raise ConfigError(f"--extract: {extract!r} is not one of auto, number, choice, none")


def _metric_fns(names: Sequence[str], host: Any) -> dict[str, Callable[..., Mapping[str, float]]]:
    known = host.registrations("metric")
    fns: dict[str, Callable[..., Mapping[str, float]]] = {}
    for name in names:
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"--metric: no metric named {name!r}",
                hint=hint + "registered metrics: " + ", ".join(sorted(known)),
            )
        fns[name] = cast(Callable[..., Mapping[str, float]], host.get("metric", name).load())
    return fns


def _score(
    fn: Callable[..., Mapping[str, float]], name: str, preds: list[str], refs: list[str]
) -> float:
    result = fn(preds, refs)
    if name not in result:
        raise ConfigError(
            f"metric {name!r} returned no {name!r} score",
            hint="crucible eval needs metrics that score text against references "
            "(exact_match, token_f1, bleu, rouge_l, gsm8k_accuracy, mc_accuracy)",
        )
    return float(result[name])


def _kind(names: Sequence[str]) -> str:
    kinds = {
        "logprob" if n in LOGPROB_METRICS else "code" if n in CODE_METRICS else "text"
        for n in names
    }
    if len(kinds) > 1:
        raise ConfigError(
            "--metric: " + ", ".join(names) + " mix metrics that score differently "
            "(mc_logprob: option log-probabilities; pass_at_k: running sampled code; "
            "the others: generated text)",
            hint="evaluate each kind in its own crucible eval",
        )
    return kinds.pop()


def _no_answers(dataset: str, rows: Sequence[Mapping[str, Any]], spec: DatasetSpec) -> ConfigError:
    """The usage error for a dataset none of whose rows has an answer, naming the field."""
    from crucible_datasets.fields import RowError
    from crucible_datasets.loading import adapter_for

    if not rows:
        return ConfigError(f"{dataset}: the dataset has no rows")
    first = rows[0]
    adapter = adapter_for(spec, list(first))
    columns = ", ".join(map(str, first)) or "none"
    try:
        adapter(first)
    except RowError as exc:
        return ConfigError(
            f"{dataset}: rows lack the answer field {exc.field!r} ({exc})",
            hint="add the field, or map another column to it (--preset, dataset fields)",
        )
    answer = adapter.columns.get("completion") or adapter.columns.get("label") or "completion"
    return ConfigError(
        f"{dataset}: rows lack the answer field {answer!r} "
        f"(the rows have: {columns}; {len(rows)} rows read, none with an answer)",
        hint="an eval row needs a prompt and an answer: prompt/completion fields, "
        "messages ending in an assistant reply, or a --preset (gsm8k, mmlu, humaneval); "
        "also check the model's max_seq_len",
    )


def _logprob_job(target: Target, dataset: str) -> TrainingJob:
    if target.state_error is not None:
        raise ConfigError(f"mc_logprob: {target.state_error}")
    if target.job is not None:
        return convert(dict(target.job), TrainingJob)
    return TrainingJob(
        backend=target.backend,
        model_spec=target.model,
        dataset_spec=DatasetSpec(uri=dataset, template=target.template),
    )


def evaluate(
    target: Target,
    dataset: str,
    metrics: Sequence[str],
    *,
    n: int | None = None,
    preset: str | None = None,
    extract: str = "auto",
    confidence: float = 0.95,
    seed: int = 0,
    samples: int = 1,
    temperature: float | None = None,
    timeout: float = 10.0,
    host: Any = None,
    write: bool = True,
) -> EvalResult:
    """Evaluate ``target`` on ``dataset`` (a URI crucible-datasets reads) with ``metrics``.

    ``n`` caps the number of rows scored (the first ``n`` usable rows, in file
    order); ``preset`` names a row format (``gsm8k``, ``mmlu``...) for files that
    are not shipped samples. ``samples``, ``temperature`` and ``timeout`` (seconds
    per program) are pass@k's. See the module docstring for the steps. With
    ``write``, the result is saved and linked in lineage.
    """
    from crucible_datasets.hashing import dataset_hash
    from crucible_datasets.loading import preset_of, read_dataset
    from crucible_datasets.prompts import eval_prompts
    from crucible_datasets.render import get_renderer
    from crucible_datasets.sources import resolve

    from crucible_core.cli.sample_cmd import backend_from_ref
    from crucible_core.ids import new_id
    from crucible_core.plugins import get_host
    from crucible_harness.stats import bootstrap_ci

    if not metrics:
        raise ConfigError("--metric: name at least one metric")
    if n is not None and n < 1:
        raise ConfigError(f"--n: {n} is not a positive number of examples")
    if not 1 <= samples <= 128:
        raise ConfigError(f"--samples: {samples} is not between 1 and 128")
    if timeout <= 0:
        raise ConfigError(f"--timeout: {timeout} is not a positive number of seconds")
    host = host if host is not None else get_host()
    fns = _metric_fns(metrics, host)
    kind = _kind(metrics)
    if samples > 1 and kind != "code":
        raise ConfigError(
            f"--samples {samples}: only pass_at_k scores more than one sample per prompt",
            hint="add --metric pass_at_k, or leave --samples at 1",
        )
    started = time.perf_counter()
    options = {"preset": preset} if preset is not None else {}
    spec = DatasetSpec(uri=dataset, template=target.template, options=options)
    loaded = read_dataset(spec)
    _, preset = preset_of(spec, resolve(spec))
    eval_id, rows_hash = new_id("eval"), dataset_hash(loaded.rows)
    with _announced(host if write else None, eval_id, target, dataset, rows_hash) as written:
        mode, extract_fn = _extractor(preset, extract) if kind == "text" else (kind, str)
        backend = backend_from_ref(host, target.backend)
        tokenizer = backend.get_tokenizer(target.model)
        renderer = get_renderer(target.template, tokenizer)
        context = target.model.max_seq_len
        if kind == "logprob":
            inputs, outputs, references, per, corpus = _by_logprob(
                target, dataset, loaded.rows, renderer, spec, backend, fns, n
            )
        else:
            prompts = eval_prompts(loaded.rows, renderer, spec, limit=n, max_length=context)
            if not prompts:
                raise _no_answers(dataset, loaded.rows, spec)
            inputs = [str(p.get("input", "")) for p in prompts]
            sampler = backend.load_sampler(target.model, target.checkpoint)
            try:
                if kind == "code":
                    problems = [loaded.rows[int(p["index"])] for p in prompts]
                    outputs, per = _by_execution(
                        sampler, prompts, problems, samples, temperature, seed, context, timeout
                    )
                    references = [str(p["reference"]) for p in prompts]
                    corpus = {name: sum(v) / len(v) for name, v in per.items()}
                else:
                    from crucible_core.train.sampled_eval import sample_greedy

                    outputs = sample_greedy(
                        sampler, prompts, context=context, deadline_s=_DEADLINE_S
                    )
                    references = [str(p["reference"]) for p in prompts]
                    preds = [extract_fn(o) for o in outputs]
                    refs = [extract_fn(r) for r in references]
                    per, corpus = _text_scores(fns, preds, refs)
            finally:
                close = getattr(sampler, "close", None)
                if callable(close):
                    close()
        scores: list[MetricScore] = []
        for name, each in per.items():
            if len(each) >= 2:
                ci = bootstrap_ci(each, confidence=confidence, seed=seed)
                low, high, mean, method = ci.low, ci.high, ci.estimate, ci.method
            else:
                low = high = mean = each[0]
                method = "none (one example)"
            scores.append(
                MetricScore(
                    name=name,
                    score=corpus[name],
                    mean=mean,
                    low=low,
                    high=high,
                    confidence=confidence,
                    method=method,
                )
            )
        examples = [
            EvalExample(
                input=inp,
                output=out,
                reference=ref,
                scores={name: per[name][i] for name in per},
            )
            for i, (inp, out, ref) in enumerate(zip(inputs, outputs, references, strict=True))
        ]
        result = EvalResult(
            eval_id=eval_id,
            created_at=datetime.now(UTC).isoformat(),
            target=target.label,
            run_id=target.run_dir.name if target.run_dir is not None else None,
            backend=target.backend.name,
            model=target.model.name,
            checkpoint=target.checkpoint.uri if target.checkpoint is not None else None,
            dataset=dataset,
            dataset_hash=rows_hash,
            template=renderer.name,
            template_hash=renderer.template_hash,
            extract=mode,
            metrics=scores,
            examples=examples,
            seconds=round(time.perf_counter() - started, 3),
            samples=samples,
        )
        if write:
            written.append({"uri": _write(result, target).as_uri(), "type": "evaluation"})
    return result


@contextlib.contextmanager
def _announced(
    host: Any, eval_id: str, target: Target, dataset: str, rows_hash: str
) -> Iterator[list[dict[str, str]]]:
    """The evaluation as a run on an event bus: ``run.start`` then ``run.end``.

    Plugins observing ``on_event`` (the OpenLineage, MLflow and OpenTelemetry
    sinks) see an evaluation like a training run: its dataset (URI and content
    hash) as the input, the ``eval-<id>.json`` it wrote (appended by the caller
    to the yielded list) as the output, ``job_kind = "evaluation"``. The bus
    keeps no telemetry file (an evaluation is not a run directory). ``host``
    None: nothing is emitted (an evaluation that is not saved).
    """
    if host is None:
        yield []
        return
    from crucible_core.records.events import EventBus

    outputs: list[dict[str, str]] = []
    with EventBus(sink=False, host=host) as bus:
        bus.emit(
            "run.start",
            job_id=eval_id,
            job_kind="evaluation",
            name=target.label,
            dataset={"uri": dataset, "hash": rows_hash},
        )
        try:
            yield outputs
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            bus.emit("run.end", job_id=eval_id, status=status, error=str(exc), artifacts=[])
            raise
        bus.emit("run.end", job_id=eval_id, status="succeeded", error=None, artifacts=outputs)


def _text_scores(
    fns: Mapping[str, Callable[..., Mapping[str, float]]], preds: list[str], refs: list[str]
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each metric over the whole set, and over each example alone."""
    per: dict[str, list[float]] = {}
    corpus: dict[str, float] = {}
    for name, fn in fns.items():
        corpus[name] = _score(fn, name, preds, refs)
        per[name] = [_score(fn, name, [p], [r]) for p, r in zip(preds, refs, strict=True)]
    return per, corpus


def _by_logprob(
    target: Target,
    dataset: str,
    rows: Sequence[Mapping[str, Any]],
    renderer: Any,
    spec: DatasetSpec,
    backend: Any,
    fns: Mapping[str, Callable[..., Mapping[str, float]]],
    n: int | None,
) -> tuple[list[str], list[str], list[str], dict[str, list[float]], dict[str, float]]:
    from crucible_harness.choice import choice_items, score_choices

    job = _logprob_job(target, dataset)
    items = choice_items(rows, renderer, spec, limit=n, max_length=target.model.max_seq_len)
    if not items:
        raise ConfigError(
            f"{dataset}: no row is a multiple-choice question with a choice letter as its answer "
            f"({len(rows)} rows read)",
            hint="mc_logprob scores MMLU-style rows (question, choices, answer): "
            "the shipped sample:mmlu, or --preset mmlu for your file",
        )
    preds = score_choices(backend, job, target.state, items, deadline_s=_DEADLINE_S)
    refs = [item.answer for item in items]
    per, corpus = _text_scores(fns, preds, refs)
    return [item.input for item in items], preds, refs, per, corpus


def _by_execution(
    sampler: Any,
    prompts: Sequence[Mapping[str, Any]],
    problems: Sequence[Mapping[str, Any]],
    samples: int,
    temperature: float | None,
    seed: int,
    context: int | None,
    timeout: float,
) -> tuple[list[str], dict[str, list[float]]]:
    from crucible_harness.code import DEFAULT_TEMPERATURE, pass_counts, pass_scores, sample_n

    if temperature is None:
        temperature = DEFAULT_TEMPERATURE if samples > 1 else 0.0
    completions = sample_n(
        sampler,
        prompts,
        n=samples,
        temperature=temperature,
        seed=seed,
        context=context,
        deadline_s=_DEADLINE_S,
    )
    passed, _ = pass_counts(problems, completions, timeout=timeout)
    return [c[0] for c in completions], pass_scores(samples, passed)


def eval_path(result: EvalResult, target: Target) -> Path:
    """Where ``result`` is saved: the run directory, else ``$CRUCIBLE_HOME/evals``."""
    from crucible_core.records import paths

    base = target.run_dir if target.run_dir is not None else paths.crucible_home() / "evals"
    return base / f"{result.eval_id}.json"


def _write(result: EvalResult, target: Target) -> Path:
    from crucible_core.ir.lineage import Edge
    from crucible_core.records.lineage import LineageRecorder

    path = eval_path(result, target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    tmp.replace(path)
    node = f"eval:{result.eval_id}"
    edges = [
        Edge(
            src=node,
            dst=f"dataset:{result.dataset_hash}",
            kind="evaluated_on",
            metadata={"uri": result.dataset, "examples": len(result.examples)},
        )
    ]
    if result.run_id is not None:
        edges.append(Edge(src=node, dst=result.run_id, kind="derived_from"))
    else:
        edges.append(Edge(src=node, dst=f"model:{result.model}", kind="derived_from"))
    with LineageRecorder() as recorder:
        recorder.add_edges(edges)
    return path


def read_eval(path: Path) -> EvalResult:
    """An ``eval-<id>.json`` written by :func:`evaluate` (ConfigError naming a bad file)."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=EvalResult)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such evaluation file") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{path}: not an evaluation file ({exc})") from None

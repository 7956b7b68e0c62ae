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
   --derived_from--> the run.

Answer extraction: a GSM8K-style dataset (preset ``gsm8k``) compares final
numbers under ``exact_match`` (the worked solution is not what is scored),
an MMLU-style one (preset ``mmlu``) the chosen letters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.codec import convert
from crucible_core.ir.common import BackendRef
from crucible_core.ir.training import DatasetSpec, ModelSpec

__all__ = [
    "EVAL_SCHEMA_VERSION",
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
    from crucible_core.cli.runref import find_run
    from crucible_core.cli.sample_cmd import resolve_sampler

    run_dir, manifest = find_run(ref)
    if base:
        backend_ref = convert(manifest.get("backend") or {"name": "local"}, BackendRef)
        model_raw = manifest.get("model")
        if not isinstance(model_raw, dict):
            raise ConfigError(f"{run_dir}: the manifest records no model", hint="a training run?")
        model = convert(cast(dict[str, Any], model_raw), ModelSpec)
        checkpoint = None
    else:
        backend_ref, model, checkpoint = resolve_sampler(ref)
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
    )


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
    host: Any = None,
    write: bool = True,
) -> EvalResult:
    """Evaluate ``target`` on ``dataset`` (a URI crucible-datasets reads) with ``metrics``.

    ``n`` caps the number of rows scored (the first ``n`` usable rows, in file
    order); ``preset`` names a row format (``gsm8k``, ``mmlu``...) for files that
    are not shipped samples. See the module docstring for the steps. With ``write``, the result
    is saved and linked in lineage.
    """
    from crucible_datasets.hashing import dataset_hash
    from crucible_datasets.loading import preset_of, read_dataset
    from crucible_datasets.prompts import eval_prompts
    from crucible_datasets.render import get_renderer
    from crucible_datasets.sources import resolve

    from crucible_core.cli.sample_cmd import backend_from_ref
    from crucible_core.ids import new_id
    from crucible_core.plugins import get_host
    from crucible_core.train.sampled_eval import sample_greedy
    from crucible_harness.stats import bootstrap_ci

    if not metrics:
        raise ConfigError("--metric: name at least one metric")
    if n is not None and n < 1:
        raise ConfigError(f"--n: {n} is not a positive number of examples")
    host = host if host is not None else get_host()
    fns = _metric_fns(metrics, host)
    started = time.perf_counter()
    options = {"preset": preset} if preset is not None else {}
    spec = DatasetSpec(uri=dataset, template=target.template, options=options)
    loaded = read_dataset(spec)
    _, preset = preset_of(spec, resolve(spec))
    mode, extract_fn = _extractor(preset, extract)
    backend = backend_from_ref(host, target.backend)
    tokenizer = backend.get_tokenizer(target.model)
    renderer = get_renderer(target.template, tokenizer)
    prompts = eval_prompts(
        loaded.rows, renderer, spec, limit=n, max_length=target.model.max_seq_len
    )
    if not prompts:
        raise ConfigError(
            f"{dataset}: no row gives a prompt and a reference answer "
            f"({len(loaded.rows)} rows read)",
            hint="rows need a prompt and an answer (chat rows ending in an assistant message, "
            "or prompt/completion fields); check dataset fields and the model's max_seq_len",
        )
    sampler = backend.load_sampler(target.model, target.checkpoint)
    try:
        outputs = sample_greedy(
            sampler, prompts, context=target.model.max_seq_len, deadline_s=_DEADLINE_S
        )
    finally:
        close = getattr(sampler, "close", None)
        if callable(close):
            close()
    references = [str(p["reference"]) for p in prompts]
    preds = [extract_fn(o) for o in outputs]
    refs = [extract_fn(r) for r in references]
    scores: list[MetricScore] = []
    per: dict[str, list[float]] = {}
    for name, fn in fns.items():
        corpus = _score(fn, name, preds, refs)
        each = [_score(fn, name, [p], [r]) for p, r in zip(preds, refs, strict=True)]
        per[name] = each
        if len(each) >= 2:
            ci = bootstrap_ci(each, confidence=confidence, seed=seed)
            low, high, mean, method = ci.low, ci.high, ci.estimate, ci.method
        else:
            low = high = mean = each[0]
            method = "none (one example)"
        scores.append(
            MetricScore(
                name=name,
                score=corpus,
                mean=mean,
                low=low,
                high=high,
                confidence=confidence,
                method=method,
            )
        )
    examples = [
        EvalExample(
            input=str(p.get("input", "")),
            output=out,
            reference=ref,
            scores={name: per[name][i] for name in fns},
        )
        for i, (p, out, ref) in enumerate(zip(prompts, outputs, references, strict=True))
    ]
    result = EvalResult(
        eval_id=new_id("eval"),
        created_at=datetime.now(UTC).isoformat(),
        target=target.label,
        run_id=target.run_dir.name if target.run_dir is not None else None,
        backend=target.backend.name,
        model=target.model.name,
        checkpoint=target.checkpoint.uri if target.checkpoint is not None else None,
        dataset=dataset,
        dataset_hash=dataset_hash(loaded.rows),
        template=renderer.name,
        template_hash=renderer.template_hash,
        extract=mode,
        metrics=scores,
        examples=examples,
        seconds=round(time.perf_counter() - started, 3),
    )
    if write:
        _write(result, target)
    return result


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

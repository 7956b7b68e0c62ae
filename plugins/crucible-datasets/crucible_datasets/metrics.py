"""Evaluation metrics: ``metric(predictions, references, **options) -> dict[str, float]``.

* ``exact_match``: SQuAD normalisation (lower case, no punctuation, no
  articles, single spaces), best over a reference's alternatives.
* ``token_f1``: SQuAD token-overlap F1 on the same normalisation.
* ``bleu``: corpus BLEU from sacrebleu (0-100, sacrebleu's scale).
* ``rouge_l``: mean ROUGE-L F-measure from Google's rouge-score (stemmed).
* ``mc_accuracy``: the choice letter found in a prediction vs the answer
  (a letter, an index, or an MMLU row with ``answer``).
* ``gsm8k_accuracy``: the final number of a prediction (after ``####`` if
  present, else after "answer is", else the last number) vs the reference's.
* ``pass_at_k``: HumanEval's unbiased pass@k estimator over ``n`` samples per
  problem, each run by :func:`crucible_datasets.execution.run_program`.

A reference may be one string or a list of acceptable strings. Every metric
returns its scores plus ``count`` (the number of examples scored).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from crucible_core.errors import ConfigError

__all__ = [
    "bleu",
    "exact_match",
    "extract_choice",
    "extract_final_number",
    "gsm8k_accuracy",
    "mc_accuracy",
    "normalize_answer",
    "pass_at_k",
    "pass_at_k_estimate",
    "rouge_l",
    "token_f1",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = str.maketrans("", "", string.punctuation)
_LETTERS = "ABCDEFGHIJ"


def _pair(predictions: Sequence[Any], references: Sequence[Any], name: str) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise ConfigError(f"{name}: predictions and references must be lists, not strings")
    if len(predictions) != len(references):
        raise ConfigError(
            f"{name}: {len(predictions)} predictions but {len(references)} references",
            hint="give one reference (or list of alternatives) per prediction",
        )


def _alternatives(reference: Any) -> list[str]:
    if isinstance(reference, str):
        return [reference]
    if isinstance(reference, Sequence):
        alts = [str(r) for r in cast(Sequence[Any], reference)]
        if not alts:
            raise ConfigError("a reference has no alternatives (empty list)")
        return alts
    return [str(reference)]


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, strip punctuation and articles, collapse spaces."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def exact_match(
    predictions: Sequence[str], references: Sequence[Any], *, normalize: bool = True
) -> dict[str, float]:
    """Fraction of predictions equal to one of their references (after normalisation)."""
    _pair(predictions, references, "exact_match")
    norm = normalize_answer if normalize else (lambda s: s)
    scores = [
        float(any(norm(p) == norm(r) for r in _alternatives(ref)))
        for p, ref in zip(predictions, references, strict=True)
    ]
    return {"exact_match": _mean(scores), "count": float(len(scores))}


def _f1(prediction: str, reference: str) -> float:
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(reference).split()
    if not pred or not gold:
        return float(pred == gold)
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(predictions: Sequence[str], references: Sequence[Any]) -> dict[str, float]:
    """Mean token F1 (SQuAD), the best over each reference's alternatives."""
    _pair(predictions, references, "token_f1")
    scores = [
        max(_f1(p, r) for r in _alternatives(ref))
        for p, ref in zip(predictions, references, strict=True)
    ]
    return {"token_f1": _mean(scores), "count": float(len(scores))}


def bleu(predictions: Sequence[str], references: Sequence[Any], **options: Any) -> dict[str, float]:
    """Corpus BLEU with sacrebleu (``options`` go to ``sacrebleu.corpus_bleu``, e.g. tokenize)."""
    _pair(predictions, references, "bleu")
    import sacrebleu

    alts = [_alternatives(r) for r in references]
    width = max((len(a) for a in alts), default=1)
    # sacrebleu wants one stream per reference position; pad short lists with their first.
    streams = [[a[i] if i < len(a) else a[0] for a in alts] for i in range(width)]
    result = sacrebleu.corpus_bleu(list(predictions), streams, **options)
    return {"bleu": float(result.score), "count": float(len(predictions))}


def rouge_l(
    predictions: Sequence[str], references: Sequence[Any], *, use_stemmer: bool = True
) -> dict[str, float]:
    """Mean ROUGE-L F-measure (rouge-score), the best over each reference's alternatives."""
    _pair(predictions, references, "rouge_l")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    scores = [
        float(scorer.score_multi(_alternatives(ref), pred)["rougeL"].fmeasure)
        for pred, ref in zip(predictions, references, strict=True)
    ]
    return {"rouge_l": _mean(scores), "count": float(len(scores))}


# -- multiple choice -------------------------------------------------------------------

_ANSWER_IS = re.compile(r"(?i:answer)\s*(?:(?i:is)|:)?\s*:?\s*\(?([A-J])\)?(?![A-Za-z])")
_LEADING = re.compile(r"^\s*\(?([A-J])\)?(?:[.):]|\s*$)")
_PAREN = re.compile(r"\(([A-J])\)")
_ALONE = re.compile(r"^\s*\(?([A-Ja-j])\)?[.)]?\s*$")


def extract_choice(prediction: str, letters: str = _LETTERS) -> str | None:
    """The choice letter a prediction picks: "the answer is (B)", "B.", "(B)", "b"; else None."""
    alone = _ALONE.match(prediction)
    if alone:
        letter = alone.group(1).upper()
        return letter if letter in letters else None
    for pattern in (_ANSWER_IS, _LEADING, _PAREN):
        found = pattern.findall(prediction)
        if found:
            letter = (found[-1] if pattern is _ANSWER_IS else found[0]).upper()
            if letter in letters:
                return letter
    return None


def _reference_letter(reference: Any) -> str:
    if isinstance(reference, Mapping):
        reference = cast(Mapping[str, Any], reference).get("answer")
    if isinstance(reference, bool):
        raise ConfigError("mc_accuracy: a reference is a bool; expected a letter or an index")
    if isinstance(reference, int) and 0 <= reference < len(_LETTERS):
        return _LETTERS[reference]
    if isinstance(reference, str):
        ref = reference.strip().upper()
        if ref.isdigit() and int(ref) < len(_LETTERS):
            return _LETTERS[int(ref)]
        if len(ref) == 1 and ref in _LETTERS:
            return ref
    raise ConfigError(
        f"mc_accuracy: reference {reference!r} is not a choice letter (A-J) or index",
        hint="pass letters, indices, or MMLU rows with an `answer` field",
    )


def mc_accuracy(predictions: Sequence[str], references: Sequence[Any]) -> dict[str, float]:
    """Fraction of predictions whose chosen letter is the answer; ``unparsed`` counts none found."""
    _pair(predictions, references, "mc_accuracy")
    correct = 0
    unparsed = 0
    for pred, ref in zip(predictions, references, strict=True):
        letter = extract_choice(pred)
        if letter is None:
            unparsed += 1
        elif letter == _reference_letter(ref):
            correct += 1
    n = len(predictions)
    return {
        "mc_accuracy": correct / n if n else 0.0,
        "unparsed": float(unparsed),
        "count": float(n),
    }


# -- GSM8K -------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_NUMBER = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)


def _to_decimal(text: str) -> Decimal | None:
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def extract_final_number(text: str) -> Decimal | None:
    """A solution's final answer: after ``####``, else after "answer is", else the last number."""
    for pattern in (_HASHES, _ANSWER_NUMBER):
        m = pattern.search(text)
        if m:
            numbers = _NUMBER.findall(m.group(1))
            if numbers:
                return _to_decimal(numbers[0])
    numbers = _NUMBER.findall(text)
    return _to_decimal(numbers[-1]) if numbers else None


def gsm8k_accuracy(predictions: Sequence[str], references: Sequence[Any]) -> dict[str, float]:
    """Fraction of predictions whose final number equals the reference's (exactly, as decimals).

    A reference is a GSM8K answer (``... #### 42``), a number, or a row with ``answer``.
    """
    _pair(predictions, references, "gsm8k_accuracy")
    correct = 0
    unparsed = 0
    for pred, ref in zip(predictions, references, strict=True):
        if isinstance(ref, Mapping):
            ref = cast(Mapping[str, Any], ref).get("answer")
        gold = extract_final_number(str(ref))
        if gold is None:
            raise ConfigError(
                f"gsm8k_accuracy: reference {str(ref)[-60:]!r} holds no number",
                hint="pass GSM8K answers ('... #### 42') or numbers",
            )
        got = extract_final_number(pred)
        if got is None:
            unparsed += 1
        elif got == gold:
            correct += 1
    n = len(predictions)
    return {
        "gsm8k_accuracy": correct / n if n else 0.0,
        "unparsed": float(unparsed),
        "count": float(n),
    }


# -- pass@k --------------------------------------------------------------------------------


def pass_at_k_estimate(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem with ``c`` correct out of ``n`` samples.

    ``1 - C(n - c, k) / C(n, k)`` (Chen et al., 2021), computed as a stable product.
    """
    if not 0 <= c <= n or k < 1 or k > n:
        raise ConfigError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k(
    predictions: Sequence[Any],
    references: Sequence[Mapping[str, Any]],
    *,
    k: int | Sequence[int] = (1,),
    timeout: float = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
) -> dict[str, float]:
    """pass@k for code: each problem's completions run against its tests.

    ``predictions[i]`` is one completion or a list of ``n`` completions for problem
    ``references[i]`` (a HumanEval row: ``prompt``, ``test``, ``entry_point``).
    The program is prompt + completion + test + ``check(entry_point)``; it passes if
    it exits 0 within ``timeout`` seconds and ``memory_mb`` of address space.
    Returns ``pass@K`` for each ``K`` in ``k`` that is <= every problem's ``n``,
    plus ``count`` and ``timeouts``.
    """
    from crucible_datasets.execution import humaneval_program, run_program

    _pair(predictions, references, "pass_at_k")
    ks = [k] if isinstance(k, int) else list(k)
    samples: list[list[str]] = [
        [p] if isinstance(p, str) else [str(x) for x in cast(Sequence[Any], p)] for p in predictions
    ]
    if any(not s for s in samples):
        raise ConfigError("pass_at_k: a problem has no completions")
    jobs = [
        (i, humaneval_program(ref, completion))
        for i, (ref, comps) in enumerate(zip(references, samples, strict=True))
        for completion in comps
    ]
    passed = [0] * len(samples)
    timeouts = 0
    with ThreadPoolExecutor(max_workers=workers or max(1, min(8, _cpus()))) as pool:
        results = list(
            pool.map(lambda job: run_program(job[1], timeout=timeout, memory_mb=memory_mb), jobs)
        )
    for (i, _), result in zip(jobs, results, strict=True):
        passed[i] += int(result.passed)
        timeouts += int(result.status == "timeout")
    n_min = min(len(s) for s in samples) if samples else 0
    out: dict[str, float] = {}
    for kk in ks:
        if kk > n_min:
            continue
        scores = [pass_at_k_estimate(len(s), c, kk) for s, c in zip(samples, passed, strict=True)]
        out[f"pass@{kk}"] = _mean(scores)
    if not out and samples:
        raise ConfigError(
            f"pass_at_k: every k in {ks} exceeds the number of samples per problem ({n_min})",
            hint="sample at least k completions per problem",
        )
    out["count"] = float(len(samples))
    out["timeouts"] = float(timeouts)
    return out


def _cpus() -> int:
    import os

    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )

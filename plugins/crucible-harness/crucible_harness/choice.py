"""Multiple-choice accuracy by the log-probability of each option (MMLU-style), not by sampling.

Why: a greedy completion is scored only if the model writes a letter the
extractor finds; a base or lightly trained model often writes something else,
and its accuracy then measures its formatting, not its knowledge. Scoring
each option by the likelihood the model gives it (what lm-evaluation-harness
and HELM do for MMLU) always yields a choice, and is a function of the
weights alone (no sampling).

How: every option of an item is the item's conversation with the option as
the assistant's reply, rendered with the run's template exactly as training
renders it (:meth:`Renderer.render`: the reply's tokens, and the end-of-turn
token the template trains, carry weight 1, the prompt 0). One
:class:`~crucible_core.ir.backend.Datum` per option goes through
``TrainingSession.forward`` (the training contract's logprob path, the one
DPO's reference pass uses: no gradient, no optimizer step), which returns the
log-probability of every target token; an option's score is the weighted
sum. The prediction is the option with the highest score (the first on a
tie). The options are the choice letters (``A``, ``B``...): one token each in
common tokenizers, so the sum has no length bias to normalise away.

Which weights: a session created from the run's TrainingJob that loads the
run's last **state** checkpoint (the same weights its final sampler
checkpoint holds); ``--base`` (or a model on a backend) a fresh session, whose
weights are the base model's (a new LoRA adapter is the identity).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from crucible_core.errors import ConfigError
from crucible_core.ir.backend import CheckpointRef, Datum
from crucible_core.ir.training import DatasetSpec, Loss, TrainingJob

__all__ = [
    "LETTERS",
    "ChoiceItem",
    "choice_items",
    "mc_logprob",
    "option_scores",
    "pick",
    "score_choices",
]

LETTERS = "ABCDEFGHIJ"
#: Datums per ``forward`` call: small enough for a CPU batch, large enough to amortise a call.
_CHUNK = 16


@dataclass(frozen=True)
class ChoiceItem:
    """One question: its options (letters), one Datum per option, and the right letter."""

    input: str
    letters: str
    answer: str
    datums: tuple[Datum, ...]


def _n_choices(row: Mapping[str, Any]) -> int:
    raw = row.get("choices")
    if isinstance(raw, list):
        return len(cast(list[Any], raw))
    present = [k for k in LETTERS if k in row]
    return len(present) if len(present) >= 2 else 4


def choice_items(
    rows: Iterable[Mapping[str, Any]],
    renderer: Any,
    spec: DatasetSpec,
    *,
    limit: int | None = None,
    max_length: int | None = None,
) -> list[ChoiceItem]:
    """The multiple-choice items of ``rows`` (at most ``limit``), rendered for scoring.

    A row counts if its example ends in an assistant reply that is one of its
    choice letters (the ``mmlu`` preset makes such rows); other rows, and
    items whose longest option does not fit in ``max_length`` tokens, are left out.
    """
    from crucible_datasets.datums import to_datum
    from crucible_datasets.prompts import conversations, last_user

    out: list[ChoiceItem] = []
    if limit is not None and limit <= 0:
        return out
    for _, row, messages in conversations(rows, spec):
        if messages[-1].get("role") != "assistant":
            continue
        letters = LETTERS[: _n_choices(row)]
        answer = messages[-1].get("content", "").strip().upper()
        if len(answer) != 1 or answer not in letters:
            continue
        rendered = [
            renderer.render([*messages[:-1], {"role": "assistant", "content": letter}])
            for letter in letters
        ]
        if max_length is not None and max(len(r.tokens) for r in rendered) > max_length:
            continue
        out.append(
            ChoiceItem(
                input=last_user(messages[:-1]),
                letters=letters,
                answer=answer,
                datums=tuple(to_datum(r.tokens, r.weights) for r in rendered),
            )
        )
        if limit is not None and len(out) >= limit:
            break
    return out


def option_scores(
    session: Any, items: Sequence[ChoiceItem], *, deadline_s: float, chunk: int = _CHUNK
) -> list[list[float]]:
    """Each item's options' summed log-probabilities, through ``session.forward``."""
    flat = [d for item in items for d in item.datums]
    sums: list[float] = []
    for start in range(0, len(flat), chunk):
        batch = flat[start : start + chunk]
        result = session.forward(batch, Loss()).result(timeout=deadline_s)
        for datum, lps in zip(batch, result.logprobs, strict=True):
            weights = datum.loss_fn_inputs.weights or [1.0] * len(lps)
            sums.append(sum(w * lp for w, lp in zip(weights, lps, strict=True)))
    out: list[list[float]] = []
    at = 0
    for item in items:
        out.append(sums[at : at + len(item.datums)])
        at += len(item.datums)
    return out


def pick(scores: Sequence[float], letters: str) -> str:
    """The letter of the highest score (the first on a tie)."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return letters[best]


def score_choices(
    backend: Any,
    job: TrainingJob,
    state: CheckpointRef | None,
    items: Sequence[ChoiceItem],
    *,
    deadline_s: float,
) -> list[str]:
    """The letter each item's options' log-probabilities pick, with ``state``'s weights.

    A training session of ``job`` is opened in a scratch directory (it writes
    nothing the run keeps), loads ``state`` (None: the base weights) and is closed.
    """
    with tempfile.TemporaryDirectory(prefix="crucible-eval-logprob-") as scratch:
        session = backend.create_session(job, run_dir=Path(scratch))
        try:
            if state is not None:
                session.load_state(state).result(timeout=deadline_s)
            scores = option_scores(session, items, deadline_s=deadline_s)
        finally:
            session.close()
    return [pick(s, item.letters) for s, item in zip(scores, items, strict=True)]


def mc_logprob(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Accuracy of the letters chosen by option log-probability (``crucible eval`` chooses them).

    Registered as the metric ``mc_logprob``: ``crucible eval`` recognises the name and
    scores options through a training session instead of sampling; this compares the
    letters it picked with the answers.
    """
    if len(predictions) != len(references):
        raise ConfigError(
            f"mc_logprob: {len(predictions)} predictions but {len(references)} references"
        )
    right = sum(
        p.strip().upper() == r.strip().upper() for p, r in zip(predictions, references, strict=True)
    )
    n = len(predictions)
    return {"mc_logprob": right / n if n else 0.0, "count": float(n)}

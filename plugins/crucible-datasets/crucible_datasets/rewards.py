"""Reward functions for ``workflow = "rl"``, registered through ``register_rewards``.

A reward is ``fn(completion, reference) -> float``: the sampled text and the
dataset row's answer. The RL recipe calls it once per sample.

* ``gsm8k``: 1.0 when the completion's final number (after ``####``, else
  after "answer is", else its last number) equals the reference's (a GSM8K
  answer ``... #### 42`` or a number), else 0.0: the final-answer
  correctness of :func:`~crucible_datasets.metrics.gsm8k_accuracy`.
* ``exact_match``: 1.0 when the completion equals the reference after SQuAD
  normalisation (:func:`~crucible_datasets.metrics.normalize_answer`), else 0.0.
* ``number``: a shaped reward for "answer with the number N" tasks, where a
  model that starts from random weights rarely writes the exact answer: 1.0
  when the completion's first number equals the reference's, else half the
  share of its characters that are digits (so writing digits at all is
  rewarded, and the exact number most).
"""

from __future__ import annotations

import re

from crucible_core.errors import ConfigError
from crucible_datasets.metrics import extract_final_number, normalize_answer

__all__ = ["exact_match", "gsm8k", "number"]

_FIRST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def gsm8k(completion: str, reference: str) -> float:
    """1.0 if ``completion``'s final number equals ``reference``'s, else 0.0."""
    gold = extract_final_number(str(reference))
    if gold is None:
        raise ConfigError(
            f"reward gsm8k: the reference {str(reference)[-60:]!r} holds no number",
            hint="train on GSM8K-style answers ('... #### 42') or numbers",
        )
    got = extract_final_number(completion)
    return 1.0 if got is not None and got == gold else 0.0


def exact_match(completion: str, reference: str) -> float:
    """1.0 if ``completion`` equals ``reference`` after normalisation, else 0.0."""
    return 1.0 if normalize_answer(completion) == normalize_answer(str(reference)) else 0.0


def number(completion: str, reference: str) -> float:
    """1.0 for the reference's number first, else 0.5 x the share of digit characters."""
    want = _FIRST_NUMBER.search(str(reference))
    if want is None:
        raise ConfigError(
            f"reward number: the reference {str(reference)[-60:]!r} holds no number",
            hint="each row's answer must be a number",
        )
    got = _FIRST_NUMBER.search(completion)
    if got is not None and float(got.group()) == float(want.group()):
        return 1.0
    text = completion.strip()
    if not text:
        return 0.0
    return 0.5 * sum(c.isdigit() for c in text) / len(text)

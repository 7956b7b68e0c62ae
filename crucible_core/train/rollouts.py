"""RL rollouts as training data: group-relative advantages and sampled-sequence Datums.

Pure functions (no backend, no I/O), so the rules are tested on their own:

- :func:`group_advantages`: GRPO's advantage of each sample of one prompt's
  group, ``r - mean(r)`` (divided by the group's standard deviation when
  ``scale``); a group whose rewards are all equal teaches nothing (all zero).
- :func:`sample_datum`: one sampled completion as a Datum for the
  policy losses (``importance_sampling``, ``ppo``, ...): ``model_input`` is the prompt and
  the completion shifted by one, ``weights`` are 1 on the completion's tokens
  and 0 on the prompt's, ``logprobs`` are the sampler's (what the importance
  ratio divides by) and ``advantages`` the sample's advantage on each
  completion token (for gspo also ``sequence_ratio_mask``, 1 on the completion).
- :func:`sample_seed`: the sampling seed of one prompt at one step, a pure
  function of ``(seed, step, micro, prompt)``, so a resumed run samples what
  an uninterrupted one would have from the same weights.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from crucible_core.ir.backend import Datum, LossFnInputs

__all__ = ["ADVANTAGE_STD_FLOOR", "group_advantages", "sample_datum", "sample_seed"]

#: With ``scale``, a group whose rewards' population std is below this gets zero
#: advantages (there is nothing to tell its samples apart by) instead of a division.
ADVANTAGE_STD_FLOOR = 1e-8


def group_advantages(rewards: Sequence[float], *, scale: bool = False) -> list[float]:
    """``r - mean(rewards)`` for each reward, over the population std when ``scale``
    (all zero when that std is below :data:`ADVANTAGE_STD_FLOOR`)."""
    if not rewards:
        return []
    mean = sum(rewards) / len(rewards)
    centred = [r - mean for r in rewards]
    if not scale:
        return centred
    std = math.sqrt(sum(c * c for c in centred) / len(centred))
    if std < ADVANTAGE_STD_FLOOR:
        return [0.0] * len(centred)
    return [c / std for c in centred]


def sample_datum(
    prompt: Sequence[int],
    completion: Sequence[int],
    logprobs: Sequence[float],
    advantage: float,
    *,
    ratio_mask: bool = False,
) -> Datum:
    """The Datum that trains on ``completion`` (sampled after ``prompt``) with ``advantage``.

    ``logprobs`` are the sampler's log-probabilities of the completion's tokens
    (one each). With ``ratio_mask`` it also carries ``sequence_ratio_mask``, 1 on
    the completion's tokens (the gspo loss averages its sequence ratio over them).
    Needs a non-empty prompt and completion.
    """
    if not prompt or not completion:
        raise ValueError("a sampled Datum needs a prompt and at least one completion token")
    if len(logprobs) != len(completion):
        raise ValueError(
            f"{len(logprobs)} logprobs for {len(completion)} completion tokens: one each"
        )
    tokens = [*prompt, *completion]
    skip = len(prompt) - 1  # positions whose target is a prompt token
    on_completion = [0.0] * skip + [1.0] * len(completion)
    return Datum(
        model_input=tokens[:-1],
        loss_fn_inputs=LossFnInputs(
            target_tokens=tokens[1:],
            weights=on_completion,
            logprobs=[0.0] * skip + [float(x) for x in logprobs],
            advantages=[0.0] * skip + [float(advantage)] * len(completion),
            sequence_ratio_mask=list(on_completion) if ratio_mask else None,
        ),
    )


def sample_seed(seed: int, step: int, micro: int, prompt: int) -> int:
    """A 31-bit sampling seed for ``prompt`` at optimizer step ``step``, micro-batch ``micro``."""
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF

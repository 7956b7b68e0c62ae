"""A run's schedule as pure functions: its steps, each step's batch, learning rate and optimizer.

Everything here is a function of the :class:`~crucible_core.ir.LearningConfig`
and the step number only (no clock, no session, no state), which is what makes
resume exact: a run restarted at step k computes the batch and learning rate an
uninterrupted run would have. The training loop
(:mod:`~crucible_core.train.loop`, which re-exports these names) and the
planner (:mod:`~crucible_core.train.plan`) both read the schedule from here,
so a plan counts exactly the steps and tokens the loop will run.

Supported surface: :func:`total_steps`, :func:`batches_per_epoch`,
:func:`batch_for_step`, :func:`learning_rate`, :func:`adam_params`.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence

from crucible_core.errors import ConfigError
from crucible_core.ir.backend import AdamParams, Datum
from crucible_core.ir.training import SGD, AdamW, LearningConfig

__all__ = [
    "adam_params",
    "batch_for_step",
    "batches_per_epoch",
    "learning_rate",
    "total_steps",
]


def batches_per_epoch(n_datums: int, batch_size: int) -> int:
    """Batches in one pass over ``n_datums`` (the last one may be short)."""
    return max(1, math.ceil(n_datums / batch_size))


def total_steps(config: LearningConfig, n_datums: int) -> int:
    """Optimizer steps of a run: ``max_steps``, capped by ``epochs`` when both are set."""
    if n_datums <= 0:
        raise ConfigError("the training set is empty", hint="check dataset_spec and its filters")
    per_step = config.grad_accum
    by_epochs = None
    if config.epochs is not None:
        by_epochs = max(
            1, config.epochs * batches_per_epoch(n_datums, config.batch_size) // per_step
        )
    if config.max_steps is None:
        assert by_epochs is not None  # LearningConfig refuses neither being set
        return by_epochs
    return config.max_steps if by_epochs is None else min(config.max_steps, by_epochs)


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    # Cached: every batch of an epoch reads the same order, and shuffling a large
    # dataset per batch would cost more than the step on a small model.
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


def batch_for_step(
    datums: Sequence[Datum],
    step: int,
    micro: int,
    config: LearningConfig,
    *,
    shuffle: bool = True,
    group: int = 1,
) -> tuple[list[Datum], float]:
    """The micro-batch ``micro`` of optimizer step ``step`` (0-based) and the epoch it ends in.

    ``group`` consecutive datums form one example that stays whole and in order
    (2 for DPO's (chosen, rejected) pairs): ``batch_size`` counts examples and the
    shuffle permutes examples. A pure function of its arguments: this is what
    makes resume exact.
    """
    examples = len(datums) // group
    bpe = batches_per_epoch(examples, config.batch_size)
    index = step * config.grad_accum + micro
    epoch, k = divmod(index, bpe)
    start, stop = k * config.batch_size, (k + 1) * config.batch_size
    chosen = (
        _permutation(examples, config.seed, epoch)[start:stop]
        if shuffle
        else range(start, min(stop, examples))
    )
    if group == 1:
        return [datums[i] for i in chosen], (index + 1) / bpe
    return [datums[i * group + j] for i in chosen for j in range(group)], (index + 1) / bpe


def learning_rate(config: LearningConfig, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): warmup, then the schedule."""
    return config.optimizer.lr * config.scheduler.multiplier(step, total)


def adam_params(config: LearningConfig, lr: float) -> AdamParams:
    """The optimizer-step parameters for ``lr`` (SGD's momentum travels as ``beta1``)."""
    opt = config.optimizer
    if isinstance(opt, AdamW):
        return AdamParams(
            learning_rate=lr,
            beta1=opt.betas[0],
            beta2=opt.betas[1],
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            grad_clip_norm=opt.grad_clip or 0.0,
        )
    assert isinstance(opt, SGD)
    return AdamParams(
        learning_rate=lr,
        beta1=opt.momentum,
        weight_decay=opt.weight_decay,
        grad_clip_norm=opt.grad_clip or 0.0,
    )

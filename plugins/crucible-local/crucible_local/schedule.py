"""The learning-rate schedule a session applies (pure arithmetic, no torch).

Who decides the learning rate of a step (``LocalBackend(lr_schedule=...)``):

* ``"caller"`` (default): the rate used is the ``AdamParams.learning_rate``
  the caller sent. This is the Tinker API's convention and what crucible's
  training loop does: it computes warmup and decay itself and sends each
  step's rate, so resume needs no scheduler state from the backend.
* ``"session"``: the rate used is ``AdamParams.learning_rate`` times
  :func:`lr_multiplier` of the job's ``LearningConfig.scheduler`` at the
  session's step: for a caller that sends the base rate every step. The
  step counter (saved by ``save_state``) is all the schedule needs.

Either way ``OptimStepResult.learning_rate`` reports the rate actually used.
"""

from __future__ import annotations

import math
from typing import Literal

from crucible_core.errors import ConfigError
from crucible_core.ir.training import LearningConfig, Scheduler

__all__ = ["LrSchedule", "check_schedule", "lr_multiplier"]

LrSchedule = Literal["session", "caller"]


def lr_multiplier(scheduler: Scheduler, step: int, total_steps: int | None) -> float:
    """The factor applied to the base rate at optimizer step ``step`` (0-based).

    Warmup: steps ``0 .. warmup_steps - 1`` get ``(step + 1) / warmup_steps``.
    Then ``constant`` stays at 1; ``linear`` falls to ``min_lr_ratio`` and
    ``cosine`` follows half a cosine down to it, both reaching it at
    ``total_steps`` (and staying there past it).
    """
    warmup = scheduler.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if scheduler.name == "constant":
        return 1.0
    if total_steps is None:
        raise ConfigError(
            f"learning_config.scheduler.name = {scheduler.name!r} needs "
            "learning_config.max_steps to know where the decay ends"
        )
    floor = scheduler.min_lr_ratio
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if scheduler.name == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def check_schedule(config: LearningConfig, mode: LrSchedule) -> None:
    """Refuse, before training, a schedule the session could not compute."""
    if mode == "session" and config.scheduler.name != "constant" and config.max_steps is None:
        raise ConfigError(
            f"learning_config.scheduler.name = {config.scheduler.name!r} needs "
            "learning_config.max_steps: the local session computes the decay and must know "
            "where it ends",
            hint="set max_steps, use scheduler 'constant', or create the backend with "
            "lr_schedule='caller' and pass each step's rate in AdamParams",
        )

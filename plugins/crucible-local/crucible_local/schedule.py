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

from typing import Literal

from crucible_core.errors import ConfigError
from crucible_core.ir.training import LearningConfig, Scheduler

__all__ = ["LrSchedule", "check_schedule", "lr_multiplier"]

LrSchedule = Literal["session", "caller"]


def lr_multiplier(scheduler: Scheduler, step: int, total_steps: int | None) -> float:
    """The factor applied to the base rate at optimizer step ``step`` (0-based):
    :meth:`crucible_core.ir.Scheduler.multiplier`, the one copy of the rule, with a
    message naming the setting when a decaying schedule has no ``max_steps``."""
    if scheduler.name != "constant" and total_steps is None and step >= scheduler.warmup_steps:
        raise ConfigError(
            f"learning_config.scheduler.name = {scheduler.name!r} needs "
            "learning_config.max_steps to know where the decay ends"
        )
    return scheduler.multiplier(step, total_steps)


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

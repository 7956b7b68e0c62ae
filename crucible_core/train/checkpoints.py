"""The checkpoint-policy engine: when to save, what to delete, which checkpoint is best.

Pure logic, no I/O: a training loop feeds :meth:`CheckpointTracker.observe`
one ``(step, epoch, metrics)`` after each step and acts on the
:class:`Decision` (save now; delete these steps' checkpoints). Backends and
the lead's training runner share it, so every backend keeps the same files.

When a checkpoint is saved, by ``CheckpointPolicy.strategy``:

- ``steps``: every ``save_every`` steps (step > 0 and a multiple of it);
- ``last``: as ``steps``, but only the newest is kept (plus the best);
- ``all``: as ``steps``, and nothing is ever deleted;
- ``epoch``: the first time each new whole epoch is observed (``epoch``
  counts completed epochs, so epoch 1.0 means one full pass is done);
- ``best``: whenever ``best_metric`` strictly improves;
- and always when ``final=True`` (the run's last step), unless that step
  was already saved.

Which are kept: the newest ``keep_last`` checkpoints (1 for ``last``), plus
the best one when ``save_best`` is true (or the strategy is ``best``). The
best is the saved checkpoint with the lowest (``best_mode="min"``) or
highest (``"max"``) finite ``metrics[best_metric]``; ties keep the earlier
one. Invariants, property-tested: the best is never deleted, and at most
``keep_last + 1`` checkpoints are kept (``all`` excepted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crucible_core.ir.training import CheckpointPolicy

__all__ = ["CheckpointTracker", "Decision"]


@dataclass(frozen=True)
class Decision:
    """What to do after one observation: save now? delete which steps? which step is best?"""

    save: bool
    delete: list[int] = field(default_factory=list[int])
    best: int | None = None


def _metric(metrics: Mapping[str, Any], name: str) -> float | None:
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class CheckpointTracker:
    """Applies one :class:`CheckpointPolicy` to a stream of observations.

    ``saved`` restores the state of a resumed run: the ``(step, metric)``
    pairs of the checkpoints that already exist (metric None if unknown).
    """

    def __init__(
        self, policy: CheckpointPolicy, *, saved: Iterable[tuple[int, float | None]] = ()
    ) -> None:
        self.policy = policy
        self._kept: dict[int, float | None] = {}
        self._best: int | None = None
        self._best_value: float | None = None
        self._last_epoch = 0
        for step, value in sorted(saved):
            self._kept[step] = value
            self._consider_best(step, value)

    @property
    def kept(self) -> list[int]:
        """The steps whose checkpoints should exist now, oldest first."""
        return sorted(self._kept)

    @property
    def best(self) -> int | None:
        """The best kept step (None when best tracking is off or nothing qualified)."""
        return self._best

    @property
    def _tracks_best(self) -> bool:
        return self.policy.save_best or self.policy.strategy == "best"

    def _better(self, value: float, than: float | None) -> bool:
        if than is None:
            return True
        return value < than if self.policy.best_mode == "min" else value > than

    def _consider_best(self, step: int, value: float | None) -> None:
        if not self._tracks_best or value is None:
            return
        if self._better(value, self._best_value):
            self._best, self._best_value = step, value

    def _wants(self, step: int, epoch: float | None, value: float | None) -> bool:
        p = self.policy
        if p.by_steps:
            return p.saves_at(step)  # the last step is saved through ``final``
        if p.strategy == "epoch":
            if epoch is None or not math.isfinite(epoch):
                return False
            return math.floor(epoch) > self._last_epoch
        return value is not None and self._better(value, self._best_value)

    def observe(
        self,
        step: int,
        epoch: float | None,
        metrics: Mapping[str, Any],
        *,
        final: bool = False,
    ) -> Decision:
        """Decide for the state after ``step``; the caller saves, then deletes ``delete``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        value = _metric(metrics, self.policy.best_metric)
        save = (final or self._wants(step, epoch, value)) and step not in self._kept
        if epoch is not None and math.isfinite(epoch):
            self._last_epoch = max(self._last_epoch, math.floor(epoch))
        if not save:
            return Decision(save=False, best=self._best)
        self._kept[step] = value
        self._consider_best(step, value)
        return Decision(save=True, delete=self._prune(), best=self._best)

    def _prune(self) -> list[int]:
        if self.policy.strategy == "all":
            return []
        limit = 1 if self.policy.strategy == "last" else self.policy.keep_last
        others = [s for s in sorted(self._kept) if s != self._best]
        doomed = others[: max(0, len(others) - limit)]
        for step in doomed:
            del self._kept[step]
        return doomed

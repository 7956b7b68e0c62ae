"""Hedging policies: when to fire backup requests, learnt from observed latencies.

A policy answers :meth:`HedgePolicy.plan` before each request: the delays (seconds
after the primary started) at which to fire backups, and an optional deadline.
After the request, :meth:`HedgePolicy.observe` reports what happened. Policies
decide *when*; the :class:`~crucible_hedging.budget.HedgeBudget` decides *whether*,
so no policy can exceed the budget.
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

from crucible_core.errors import ConfigError

__all__ = [
    "POLICIES",
    "Adaptive",
    "Deadline",
    "ExponentialBackoff",
    "FixedDelay",
    "HedgePlan",
    "HedgePolicy",
    "Observation",
    "Percentile",
    "percentile",
]


class HedgePlan(msgspec.Struct, frozen=True, kw_only=True):
    """Fire a backup at each of ``delays`` (seconds, ascending); give up at ``deadline``."""

    delays: list[float]
    deadline: float | None = None
    arm: int | None = None


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """How one request went.

    ``primary_latency`` is the primary attempt's own latency when it answered
    (``None`` if a backup won first and the primary was abandoned); ``latency`` is
    the caller's end-to-end wait; ``hedges`` how many backups were fired.
    """

    latency: float
    primary_latency: float | None
    hedges: int
    plan: HedgePlan


@runtime_checkable
class HedgePolicy(Protocol):
    """Decides when to hedge; learns from :class:`Observation` s. Must be thread-safe."""

    name: str

    def plan(self) -> HedgePlan: ...

    def observe(self, observation: Observation) -> None: ...


def _number(
    field: str, value: object, *, low: float, high: float = math.inf, open_low: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"hedging.{field}: expected a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and (v > low if open_low else v >= low) and v <= high):
        rel = ">" if open_low else ">="
        upper = f" and <= {high:g}" if math.isfinite(high) else ""
        raise ConfigError(
            f"hedging.{field}: must be a finite number {rel} {low:g}{upper}, got {value!r}"
        )
    return v


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; ``values`` must not be empty."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


class _LatencyWindow:
    """The last ``size`` primary latencies, thread-safe."""

    def __init__(self, size: int) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(value)

    def snapshot(self) -> list[float]:
        with self._lock:
            return list(self._values)


class FixedDelay:
    """Hedge once after ``delay_ms`` milliseconds."""

    name = "fixed"

    def __init__(self, delay_ms: float = 100.0) -> None:
        self.delay = _number("delay_ms", delay_ms, low=0.0) / 1000

    def plan(self) -> HedgePlan:
        return HedgePlan(delays=[self.delay])

    def observe(self, observation: Observation) -> None:
        return None


class Percentile:
    """Hedge once at the ``p``-th percentile of the last ``window`` primary latencies.

    Until ``min_samples`` latencies are known it hedges at ``initial_delay_ms``. Only
    primaries that answered are counted (an abandoned primary's latency is unknown
    but at least the winner's, so it is counted as that lower bound: leaving it out
    would bias the window towards fast requests).
    """

    name = "percentile"

    def __init__(
        self,
        p: float = 95.0,
        window: int = 1000,
        min_samples: int = 20,
        initial_delay_ms: float = 100.0,
    ) -> None:
        self.p = _number("p", p, low=0.0, high=100.0, open_low=True)
        self.min_samples = int(_number("min_samples", min_samples, low=1))
        self.initial = _number("initial_delay_ms", initial_delay_ms, low=0.0) / 1000
        self._window = _LatencyWindow(int(_number("window", window, low=1)))

    def current_delay(self) -> float:
        values = self._window.snapshot()
        if len(values) < self.min_samples:
            return self.initial
        return percentile(values, self.p)

    def plan(self) -> HedgePlan:
        return HedgePlan(delays=[self.current_delay()])

    def observe(self, observation: Observation) -> None:
        self._window.add(
            observation.primary_latency
            if observation.primary_latency is not None
            else observation.latency
        )


class ExponentialBackoff:
    """Up to ``max_hedges`` backups, the gaps between them growing by ``factor``.

    Backup k fires ``base_ms * (1 + factor + ... + factor**k)`` after the primary.
    """

    name = "backoff"

    def __init__(self, base_ms: float = 50.0, factor: float = 2.0, max_hedges: int = 2) -> None:
        self.base = _number("base_ms", base_ms, low=0.0, open_low=True) / 1000
        self.factor = _number("factor", factor, low=1.0)
        self.max_hedges = int(_number("max_hedges", max_hedges, low=1, high=16))

    def plan(self) -> HedgePlan:
        delays: list[float] = []
        at = 0.0
        for k in range(self.max_hedges):
            at += self.base * self.factor**k
            delays.append(at)
        return HedgePlan(delays=delays)

    def observe(self, observation: Observation) -> None:
        return None


class Deadline:
    """A per-request deadline: a backup at ``hedge_at`` x the deadline, failure at the deadline."""

    name = "deadline"

    def __init__(self, deadline_ms: float = 1000.0, hedge_at: float = 0.5) -> None:
        self.deadline = _number("deadline_ms", deadline_ms, low=0.0, open_low=True) / 1000
        self.hedge_at = _number("hedge_at", hedge_at, low=0.0, high=1.0, open_low=True)

    def plan(self) -> HedgePlan:
        return HedgePlan(delays=[self.deadline * self.hedge_at], deadline=self.deadline)

    def observe(self, observation: Observation) -> None:
        return None


class Adaptive:
    """A bandit over candidate delays, choosing by bootstrapped Thompson sampling to
    minimise the ``target`` percentile of latency (p99 by default) under the budget.

    Arm k hedges at the ``candidates[k]``-th percentile of the primary latencies seen
    so far. Hedging is a full-information problem: the primary's latency is observed
    whatever the arm (abandoned primaries are timed to the end), so every arm can be
    judged without being played. Every ``refresh`` requests the policy draws a
    bootstrap resample of the latency window (the posterior draw), estimates for each
    arm the ``target`` percentile it would achieve, ``min(primary, delay + backup)``
    with backups rationed to the ``budget`` share, and plays the best arm until the
    next draw. Arms that would want backups more often than ``headroom`` x the
    budget are ruled out (see :meth:`estimate`). Resampling keeps it exploring while
    the window is small and settles as it fills. Before ``min_samples`` latencies it
    hedges at ``initial_delay_ms``. ``budget`` defaults to the wrapping
    ``HedgedBackend``'s.
    """

    name = "adaptive"

    def __init__(
        self,
        candidates: Sequence[float] = (80.0, 85.0, 90.0, 93.0, 95.0, 97.0, 98.0, 99.0),
        target: float = 99.0,
        window: int = 1000,
        min_samples: int = 20,
        initial_delay_ms: float = 100.0,
        refresh: int = 25,
        resample: int = 1000,
        budget: float | None = None,
        headroom: float = 0.8,
        seed: int | None = None,
    ) -> None:
        if not candidates:
            raise ConfigError("hedging.candidates: give at least one percentile")
        self.candidates = sorted(
            _number(f"candidates[{i}]", c, low=0.0, high=100.0, open_low=True)
            for i, c in enumerate(candidates)
        )
        self.target = _number("target", target, low=0.0, high=100.0, open_low=True)
        self.min_samples = int(_number("min_samples", min_samples, low=2))
        self.initial = _number("initial_delay_ms", initial_delay_ms, low=0.0) / 1000
        self.refresh = int(_number("refresh", refresh, low=1))
        self.resample = int(_number("resample", resample, low=10))
        self.budget = None if budget is None else _number("budget", budget, low=0.0, high=1.0)
        self.headroom = _number("headroom", headroom, low=0.0, high=1.0, open_low=True)
        self._window = _LatencyWindow(int(_number("window", window, low=1)))
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._countdown = 0
        self._arm = len(self.candidates) - 1
        self.plays = [0] * len(self.candidates)

    def estimate(self, sample: Sequence[float], arm: int, rng: random.Random) -> float:
        """The ``target`` percentile of latency that ``arm`` would give on ``sample``.

        An arm whose backups would be wanted more often than ``headroom`` x the budget
        scores infinity (unless no arm fits): the budget would then refuse backups in
        bursts, at busy moments, which is when the stragglers it exists for arrive,
        something a random rationing model would not see.
        """
        delay = percentile(sample, self.candidates[arm])
        slow = sum(1 for x in sample if x > delay)
        budget = 1.0 if self.budget is None else self.budget
        if slow > self.headroom * budget * len(sample) and arm != len(self.candidates) - 1:
            return math.inf
        ration = 1.0 if slow == 0 else min(1.0, budget * len(sample) / slow)
        out: list[float] = []
        for x in sample:
            if x > delay and rng.random() < ration:
                x = min(x, delay + rng.choice(sample))
            out.append(x)
        return percentile(out, self.target)

    def plan(self) -> HedgePlan:
        values = self._window.snapshot()
        if len(values) < self.min_samples:
            return HedgePlan(delays=[self.initial])
        with self._lock:
            if self._countdown <= 0:
                sample = self._rng.choices(values, k=min(self.resample, len(values)))
                scores = [self.estimate(sample, k, self._rng) for k in range(len(self.candidates))]
                # Ties go to the later delay: the same tail for fewer backups.
                self._arm = min(range(len(scores)), key=lambda k: (scores[k], -k))
                self._countdown = self.refresh
            self._countdown -= 1
            arm = self._arm
            self.plays[arm] += 1
        return HedgePlan(delays=[percentile(values, self.candidates[arm])], arm=arm)

    def observe(self, observation: Observation) -> None:
        self._window.add(
            observation.primary_latency
            if observation.primary_latency is not None
            else observation.latency
        )


POLICIES: dict[str, type] = {
    "fixed": FixedDelay,
    "percentile": Percentile,
    "adaptive": Adaptive,
    "backoff": ExponentialBackoff,
    "deadline": Deadline,
}

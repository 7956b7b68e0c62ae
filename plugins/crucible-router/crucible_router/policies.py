"""Routing policies: which member a routed request tries first, then next.

Why: when several members are equivalent (the same model on two providers,
adapters of one base), the best one to ask depends on what has been observed:
latency, errors, price, and the quality of their answers when an evaluation
feeds it back. A policy turns those observations into an order per request.

A policy is any object with

- ``order(members: Sequence[str]) -> list[str]``: the order to try the members
  in for one request (a permutation of ``members``, the route's available ones);
- ``observe(member, *, latency_s, failed, cost)``: the outcome of one attempt on
  ``member`` (``cost`` in the member's currency, from ``Capabilities.costs`` and
  the call's usage; 0 for a failure);
- optionally ``feedback(member, quality)``: a quality score in [0, 1] for one of
  ``member``'s answers, and ``metrics() -> Mapping[str, float]``.

Policies are registered through the ``register_routing_policies`` hook (this
plugin registers ``primary``, ``round_robin`` and ``adaptive``) and chosen by
name with ``RoutedBackend(policy=..., policy_options=...)``, or passed as an
object.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crucible_core.errors import ConfigError

__all__ = ["AdaptivePolicy", "PrimaryFirst", "RoundRobin"]


class PrimaryFirst:
    """Always the configured order: the primary, then the fallbacks (the default)."""

    def order(self, members: Sequence[str]) -> list[str]:
        return list(members)

    def observe(self, member: str, *, latency_s: float, failed: bool, cost: float) -> None:
        return None


class RoundRobin:
    """Each request starts one member further along; the rest follow in order."""

    def __init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()

    def order(self, members: Sequence[str]) -> list[str]:
        with self._lock:
            start, self._next = self._next, self._next + 1
        k = start % len(members) if members else 0
        return [*members[k:], *members[:k]]

    def observe(self, member: str, *, latency_s: float, failed: bool, cost: float) -> None:
        return None


@dataclass
class _Arm:
    """Discounted sufficient statistics of one member's outcomes."""

    n: float = 0.0  # attempts
    failures: float = 0.0
    lat_sum: float = 0.0
    lat_sq: float = 0.0
    cost_sum: float = 0.0
    paid: float = 0.0  # successful attempts (the ones that cost)
    q_n: float = 0.0
    q_sum: float = 0.0
    q_sq: float = 0.0

    def decay(self, factor: float) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) * factor)


def _mean_sd(n: float, total: float, sq: float, floor: float) -> tuple[float, float]:
    mean = total / n
    var = max(0.0, sq / n - mean * mean)
    return mean, max(math.sqrt(var), floor)


class AdaptivePolicy:
    """Thompson sampling over a weighted loss (lower is better), per request::

        loss = latency * E[latency_s] + errors * P(fail)
               + cost * E[cost per 1000 requests] - quality * E[quality]

    Each request draws, per member, a plausible value of each term from its
    posterior (Beta for the failure rate, Normal around the observed mean with a
    standard error of sd / sqrt(n) for latency and quality; cost is the observed
    mean, since it follows from declared prices) and orders the
    members by the drawn loss. A member with few observations has wide
    posteriors and is tried now and then (exploration); one that is clearly worse
    is almost never tried. ``exploration`` scales the posteriors' spread (0: greedy
    on the means). Members tried fewer than ``warmup`` times go first.
    ``decay`` (< 1) forgets old outcomes geometrically at every observation, so a
    member that degrades (or recovers) is noticed. Quality defaults to
    ``quality_prior`` until feedback arrives. ``seed`` makes the draws
    reproducible.

    The weights are the objective: ``latency`` per second, ``errors`` per failed
    attempt (a failure costs the caller its time plus a fallback), ``cost`` per
    currency unit per 1000 requests, ``quality`` per unit of a [0, 1] score.
    """

    def __init__(
        self,
        *,
        latency: float = 1.0,
        errors: float = 1.0,
        cost: float = 0.0,
        quality: float = 0.0,
        exploration: float = 1.0,
        warmup: int = 2,
        decay: float = 0.995,
        quality_prior: float = 0.5,
        seed: int | None = None,
    ) -> None:
        for name, value in (("latency", latency), ("errors", errors), ("cost", cost),
                            ("quality", quality), ("exploration", exploration)):  # fmt: skip
            if not value >= 0:
                raise ConfigError(f"adaptive.{name} must be >= 0, got {value}")
        if not 0.0 < decay <= 1.0:
            raise ConfigError(f"adaptive.decay must be in (0, 1], got {decay}")
        if warmup < 0:
            raise ConfigError(f"adaptive.warmup must be >= 0, got {warmup}")
        self.weights = {"latency": latency, "errors": errors, "cost": cost, "quality": quality}
        self.exploration = exploration
        self.warmup = warmup
        self.decay = decay
        self.quality_prior = quality_prior
        self._rng = random.Random(seed)
        self._arms: dict[str, _Arm] = {}
        self._lock = threading.Lock()

    def _arm(self, member: str) -> _Arm:
        arm = self._arms.get(member)
        if arm is None:
            arm = self._arms[member] = _Arm()
        return arm

    def _draw(self, arm: _Arm) -> float:
        """One posterior draw of the member's loss (called with the lock held)."""
        rng, x, w = self._rng, self.exploration, self.weights
        p_mean = (1.0 + arm.failures) / (2.0 + arm.n)
        p = rng.betavariate(1.0 + arm.failures, 1.0 + arm.n - arm.failures)
        loss = w["errors"] * (p_mean + x * (p - p_mean))
        lat, sd = _mean_sd(arm.n, arm.lat_sum, arm.lat_sq, 1e-3)
        loss += w["latency"] * (lat + x * rng.gauss(0.0, sd / math.sqrt(arm.n)))
        if w["cost"] and arm.paid > 0:
            loss += w["cost"] * arm.cost_sum / arm.paid * 1000.0  # declared prices: no draw
        if w["quality"]:
            if arm.q_n > 0:
                q, q_sd = _mean_sd(arm.q_n, arm.q_sum, arm.q_sq, 0.05)
                q += x * rng.gauss(0.0, q_sd / math.sqrt(arm.q_n))
            else:
                q = self.quality_prior + x * rng.gauss(0.0, 0.25)
            loss -= w["quality"] * q
        return loss

    def order(self, members: Sequence[str]) -> list[str]:
        with self._lock:
            fresh = [m for m in members if self._arm(m).n < self.warmup]
            fresh.sort(key=lambda m: self._arms[m].n)  # least tried first, stable
            tried = [m for m in members if m not in fresh]
            drawn = {m: self._draw(self._arms[m]) for m in tried}
        return [*fresh, *sorted(tried, key=drawn.__getitem__)]

    def observe(self, member: str, *, latency_s: float, failed: bool, cost: float) -> None:
        with self._lock:
            if self.decay < 1.0:
                for arm in self._arms.values():
                    arm.decay(self.decay)
            arm = self._arm(member)
            arm.n += 1.0
            arm.failures += 1.0 if failed else 0.0
            arm.lat_sum += latency_s
            arm.lat_sq += latency_s * latency_s
            if not failed:
                arm.paid += 1.0
                arm.cost_sum += cost

    def feedback(self, member: str, quality: float) -> None:
        if not 0.0 <= quality <= 1.0:
            raise ConfigError(f"quality must be in [0, 1], got {quality}")
        with self._lock:
            arm = self._arm(member)
            arm.q_n += 1.0
            arm.q_sum += quality
            arm.q_sq += quality * quality

    def estimates(self) -> dict[str, dict[str, float]]:
        """Per member: the posterior means (``attempts``, ``error_rate``, ``latency_s``,
        ``cost_per_1k``, ``quality``) and the ``loss`` they give."""
        out: dict[str, dict[str, float]] = {}
        w = self.weights
        with self._lock:
            for name, arm in self._arms.items():
                if arm.n <= 0:
                    continue
                err = (1.0 + arm.failures) / (2.0 + arm.n)
                lat = arm.lat_sum / arm.n
                cost = arm.cost_sum / arm.paid * 1000.0 if arm.paid > 0 else 0.0
                quality = arm.q_sum / arm.q_n if arm.q_n > 0 else self.quality_prior
                loss = (
                    w["latency"] * lat + w["errors"] * err + w["cost"] * cost
                    - w["quality"] * quality
                )  # fmt: skip
                out[name] = {
                    "attempts": arm.n,
                    "error_rate": err,
                    "latency_s": lat,
                    "cost_per_1k": cost,
                    "quality": quality,
                    "loss": loss,
                }
        return out

    def metrics(self) -> Mapping[str, float]:
        """``<member>.loss`` and ``<member>.latency_s`` (posterior means)."""
        return {
            f"{name}.{key}": value
            for name, est in self.estimates().items()
            for key, value in est.items()
            if key in ("loss", "latency_s")
        }

"""Bootstrap confidence intervals (``scipy.stats.bootstrap``, BCa by default).

The resampling is seeded (``seed``), so the same data give the same interval:
reports built from them are byte-identical. A constant sample (every
resample has the same statistic) has the degenerate interval [v, v]; scipy
cannot compute BCa for it, so it is answered without resampling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
from scipy import stats as st

from crucible_core.errors import ConfigError
from crucible_harness.stats._data import Numbers, sample

__all__ = ["Interval", "bootstrap_ci", "difference_ci"]

_METHODS = ("BCa", "percentile", "basic")


class Interval(msgspec.Struct, frozen=True, kw_only=True):
    """A point estimate and its confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    method: str


def _check(confidence: float, method: str) -> None:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence: {confidence} is not in (0, 1)")
    if method not in _METHODS:
        raise ConfigError(f"method: {method!r} is not one of {', '.join(_METHODS)}")


def _mean(x: np.ndarray, axis: int = -1) -> Any:
    return np.mean(x, axis=axis)


def bootstrap_ci(
    data: Numbers,
    statistic: Callable[..., Any] = _mean,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    method: str = "BCa",
    seed: int = 0,
) -> Interval:
    """The ``confidence`` interval of ``statistic`` (vectorised, ``axis`` keyword) of ``data``."""
    _check(confidence, method)
    x = sample(data, "data", at_least=2)
    estimate = float(statistic(x, axis=-1))
    return _interval((x,), statistic, estimate, confidence, n_resamples, method, seed)


def _interval(
    samples: tuple[np.ndarray, ...],
    statistic: Callable[..., Any],
    estimate: float,
    confidence: float,
    n_resamples: int,
    method: str,
    seed: int,
) -> Interval:
    """scipy's bootstrap interval of ``statistic`` over ``samples``; a point interval when
    every sample is constant (nothing to resample, and BCa would divide by zero)."""
    if all(np.ptp(x) == 0 for x in samples):
        return Interval(
            estimate=estimate, low=estimate, high=estimate, confidence=confidence, method=method
        )
    r: Any = st.bootstrap(
        samples,
        statistic,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method=method,
        rng=np.random.default_rng(seed),
    )
    ci = r.confidence_interval
    return Interval(
        estimate=estimate,
        low=float(ci.low),
        high=float(ci.high),
        confidence=confidence,
        method=method,
    )


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> Any:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def difference_ci(
    a: Numbers,
    b: Numbers,
    *,
    paired: bool = False,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    method: str = "BCa",
    seed: int = 0,
) -> Interval:
    """The interval of mean(a) - mean(b): of the paired differences when ``paired``,
    else resampling the two samples independently."""
    x, y = sample(a, "a", at_least=2), sample(b, "b", at_least=2)
    if paired:
        if x.size != y.size:
            raise ConfigError(f"paired samples differ in length: {x.size} vs {y.size}")
        return bootstrap_ci(
            x - y, confidence=confidence, n_resamples=n_resamples, method=method, seed=seed
        )
    _check(confidence, method)
    estimate = float(x.mean() - y.mean())
    return _interval((x, y), _mean_diff, estimate, confidence, n_resamples, method, seed)

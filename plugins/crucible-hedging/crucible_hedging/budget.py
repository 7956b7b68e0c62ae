"""The hedging budget: extra requests never exceed a fraction of primary requests.

Two rules, both must allow a hedge:

* **Sliding window.** Hedges fired since the ``window``-th most recent primary
  request may not exceed ``ratio`` x the primaries in that span. Every stretch of
  ``window`` consecutive primaries (with the hedges fired among them) is inside the
  span that its last hedge was checked against, so every such stretch respects the
  bound, whatever the arrival pattern or concurrency (property-tested in
  ``tests/test_budget.py``).
* **Token bucket.** Each primary adds ``ratio`` tokens (up to ``burst``); a hedge
  spends one. This spreads hedges out: a burst of slow requests right after a quiet
  spell cannot spend the whole window's allowance at once.

The budget counts requests, not time, so it is the same under any load; it is
thread-safe because one ``HedgedBackend`` serves concurrent callers.
"""

from __future__ import annotations

import math
import threading
from collections import deque

from crucible_core.errors import ConfigError

__all__ = ["HedgeBudget"]


class HedgeBudget:
    """``ratio`` in [0, 1]: extra requests per primary; ``window`` primaries; ``burst`` tokens.

    The default ``burst`` (``ratio`` x ``window`` / 4, at least 1) lets stragglers that arrive
    together all be hedged while the window's share still holds.
    """

    def __init__(self, ratio: float = 0.05, window: int = 1000, burst: float | None = None) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            raise ConfigError(
                f"hedging.budget: must be a fraction in [0, 1], got {ratio!r}",
                hint="0.05 allows at most 5 extra requests per 100 primary requests",
            )
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"hedging.window: must be an integer >= 1, got {window!r}")
        cap = max(1.0, ratio * window / 4) if burst is None else burst
        if (
            isinstance(cap, bool)
            or not isinstance(cap, int | float)
            or not (math.isfinite(cap) and cap >= 1)
        ):
            raise ConfigError(f"hedging.burst: must be a finite number >= 1, got {burst!r}")
        self.ratio = float(ratio)
        self.window = window
        self.burst = float(cap)
        self._lock = threading.Lock()
        self._hedged: deque[int] = deque(maxlen=window)  # hedges fired after each primary
        self._in_window = 0
        self._tokens = 0.0
        self.primaries = 0
        self.hedges = 0
        self.denied = 0

    def primary(self) -> None:
        """Record a primary request."""
        with self._lock:
            if len(self._hedged) == self.window:
                self._in_window -= self._hedged[0]
            self._hedged.append(0)
            self._tokens = min(self.burst, self._tokens + self.ratio)
            self.primaries += 1

    def try_hedge(self) -> bool:
        """Spend one hedge if both rules allow it (counted in the newest primary's slot)."""
        with self._lock:
            allowed = (
                bool(self._hedged)
                and self._tokens >= 1.0
                and self._in_window + 1 <= self.ratio * len(self._hedged) + 1e-9
            )
            if not allowed:
                self.denied += 1
                return False
            self._hedged[-1] += 1
            self._in_window += 1
            self._tokens -= 1.0
            self.hedges += 1
            return True

    def in_window(self) -> tuple[int, int]:
        """(hedges, primaries) over the current window."""
        with self._lock:
            return self._in_window, len(self._hedged)

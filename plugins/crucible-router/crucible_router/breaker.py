"""``CircuitBreaker``: one backend's health as a pure state machine on an injected clock.

Why: a backend that keeps failing should stop receiving requests for a while
(each would wait for its failure, then fail over anyway), and be tried again
later by one probe rather than by the whole load at once.

States and transitions:

- ``closed``: every call is allowed. Opens after ``failure_threshold``
  consecutive failures, or when at least ``min_calls`` outcomes were recorded
  in the last ``window_s`` seconds and the share of failures among them
  reaches ``error_rate`` (when set).
- ``open``: no call is allowed until ``cooldown_s`` seconds after opening.
- ``half_open``: the first :meth:`allow` after the cool-down moves here and
  admits exactly one probe; every other call is refused while it runs. Its
  success closes the breaker (counts reset), its failure opens it again for
  another cool-down, :meth:`release` (an outcome that says nothing about
  health, e.g. a bad request) frees the slot for the next probe.

:meth:`allow` hands out a :class:`Permit`; outcomes are reported with it, so
a call that began before the latest transition cannot decide the new state.

Thread-safe. The clock is any ``() -> float`` in seconds (``time.monotonic``
by default; tests pass a fake). ``on_change(old, new, info)`` is called, outside
the lock, after every transition.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

from crucible_core.errors import ConfigError

__all__ = ["STATES", "BreakerState", "CircuitBreaker", "Permit"]

BreakerState = Literal["closed", "open", "half_open"]
STATES: tuple[BreakerState, ...] = ("closed", "half_open", "open")


class Permit(NamedTuple):
    """Leave to make one call, from :meth:`CircuitBreaker.allow`; ``probe`` in half-open."""

    generation: int
    probe: bool


OnChange = Callable[[BreakerState, BreakerState, Mapping[str, Any]], None]


class CircuitBreaker:
    """See the module docstring. Options are checked here (``ConfigError`` names the bad one)."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        error_rate: float | None = None,
        window_s: float = 60.0,
        min_calls: int = 10,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: OnChange | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ConfigError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if error_rate is not None and not 0.0 < error_rate <= 1.0:
            raise ConfigError(f"error_rate must be in (0, 1], got {error_rate}")
        if window_s <= 0 or cooldown_s < 0 or min_calls < 1:
            raise ConfigError(
                f"need window_s > 0, cooldown_s >= 0, min_calls >= 1; got window_s={window_s}, "
                f"cooldown_s={cooldown_s}, min_calls={min_calls}"
            )
        self.failure_threshold = failure_threshold
        self.error_rate = error_rate
        self.window_s = window_s
        self.min_calls = min_calls
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._outcomes: deque[tuple[float, bool]] = deque()  # (time, failed)
        self._opened_at: float | None = None
        self._probing = False
        self._generation = 0
        self.opens = 0

    # -- queries ----------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state as of now (an open breaker past its cool-down still reads ``open``
        until a call asks :meth:`allow`; :meth:`retry_in` says when that will be)."""
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker admits a probe (0 when it is not open)."""
        with self._lock:
            if self._state != "open" or self._opened_at is None:
                return 0.0
            return max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def snapshot(self) -> dict[str, Any]:
        """``state``, ``consecutive_failures``, ``window_calls``, ``window_failures``,
        ``opens`` and ``retry_in_s``: what status displays and metrics report."""
        retry = self.retry_in()
        with self._lock:
            self._trim(self._clock())
            failures = sum(1 for _, failed in self._outcomes if failed)
            return {
                "state": self._state,
                "consecutive_failures": self._consecutive,
                "window_calls": len(self._outcomes),
                "window_failures": failures,
                "opens": self.opens,
                "retry_in_s": retry,
            }

    # -- the protocol -------------------------------------------------------------

    def allow(self) -> Permit | None:
        """A permit to call this backend now, or None. A half-open permit is the one probe.

        The caller ends every permit with exactly one of :meth:`record_success`,
        :meth:`record_failure` or :meth:`release`. Outcomes of permits issued before
        the latest state change are ignored: a slow call that started while the
        breaker was closed must not close (or re-open) it from half-open.
        """
        change = None
        with self._lock:
            if self._state == "closed":
                return Permit(self._generation, probe=False)
            if self._state == "open":
                assert self._opened_at is not None
                if self._clock() < self._opened_at + self.cooldown_s:
                    return None
                change = self._move("half_open")
            if self._probing:
                return None
            self._probing = True
            permit = Permit(self._generation, probe=True)
        self._notify(change)
        return permit

    def record_success(self, permit: Permit) -> None:
        """The call answered: the probe's success closes the breaker."""
        change = None
        with self._lock:
            if permit.generation != self._generation:
                return
            now = self._clock()
            self._consecutive = 0
            if permit.probe:
                self._probing = False
                change = self._move("closed")
            else:
                self._outcomes.append((now, False))
                self._trim(now)
        self._notify(change)

    def record_failure(self, permit: Permit) -> None:
        """The backend failed: may open the breaker; the probe's failure re-opens it."""
        change = None
        with self._lock:
            if permit.generation != self._generation:
                return
            now = self._clock()
            self._consecutive += 1
            if permit.probe:
                self._probing = False
                change = self._open(now, "probe failed")
            else:
                self._outcomes.append((now, True))
                self._trim(now)
                reason = self._trip_reason()
                if reason is not None:
                    change = self._open(now, reason)
        self._notify(change)

    def release(self, permit: Permit) -> None:
        """The call ended saying nothing about health (a bad request): free the probe slot."""
        with self._lock:
            if permit.probe and permit.generation == self._generation:
                self._probing = False

    def open_for(self, seconds: float, reason: str) -> None:
        """Open now, admitting a probe ``seconds`` from now (not ``cooldown_s``): used to
        start from a state another process recorded."""
        with self._lock:
            now = self._clock()
            change = self._open(now, reason)
            self._opened_at = now + seconds - self.cooldown_s
            self._probing = False
        self._notify(change)

    # -- internals (called with the lock held) -----------------------------------

    def _trim(self, now: float) -> None:
        while self._outcomes and self._outcomes[0][0] <= now - self.window_s:
            self._outcomes.popleft()

    def _trip_reason(self) -> str | None:
        if self._consecutive >= self.failure_threshold:
            return f"{self._consecutive} consecutive failures"
        if self.error_rate is not None and len(self._outcomes) >= self.min_calls:
            failed = sum(1 for _, f in self._outcomes if f)
            rate = failed / len(self._outcomes)
            if rate >= self.error_rate:
                return (
                    f"error rate {rate:.0%} over the last {len(self._outcomes)} calls "
                    f"(threshold {self.error_rate:.0%} in {self.window_s:g} s)"
                )
        return None

    def _open(self, now: float, reason: str) -> tuple[BreakerState, BreakerState, dict[str, Any]]:
        self._opened_at = now
        self.opens += 1
        self._outcomes.clear()
        old, new, info = self._move("open")
        info.update(reason=reason, cooldown_s=self.cooldown_s)
        return old, new, info

    def _move(self, new: BreakerState) -> tuple[BreakerState, BreakerState, dict[str, Any]]:
        old, self._state = self._state, new
        self._generation += 1
        if new == "closed":
            self._outcomes.clear()
        return old, new, {"consecutive_failures": self._consecutive}

    def _notify(self, change: tuple[BreakerState, BreakerState, dict[str, Any]] | None) -> None:
        if change is not None and self._on_change is not None:
            self._on_change(*change)

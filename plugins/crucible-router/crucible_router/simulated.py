"""A simulated backend with a latency/error/cost profile on an injected clock.

Why: routing policies are judged on how they trade latency, errors and cost, and
a real provider cannot be made slow, flaky or expensive on cue. The tests and
``benchmarks/router_bench.py`` use this backend: each call draws its latency
(log-normal around ``latency_s``, with a heavy tail of ``tail_p`` calls taking
``tail_x`` times longer) and whether it fails from a seeded RNG, and advances
the clock by the latency instead of sleeping, so a run of thousands of requests
takes milliseconds and is reproducible. Not a real backend: do not register it.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from typing import Any

import msgspec

from crucible_core.errors import BackendError
from crucible_core.ir import (
    Capabilities,
    Completion,
    Costs,
    Health,
    Prompt,
    SamplingParams,
    StreamChunk,
    Usage,
)

__all__ = ["FakeClock", "SimulatedBackend"]


class FakeClock:
    """``clock()`` is the time; ``advance(s)`` (also usable as ``sleep``) moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class SimulatedBackend:
    """An ``InferenceBackend`` with the given profile (see the module docstring).

    A failure takes ``fail_latency_s`` (default: the drawn latency) and raises a
    retryable ``BackendError``. ``usage`` of each answer is ``prompt_tokens`` /
    ``completion_tokens`` (fewer when ``max_tokens`` cuts the answer);
    ``sample_per_mtok`` and ``prompt_per_mtok`` are declared in
    ``Capabilities.costs``. ``error_rate`` and ``latency_s`` may be changed
    between calls (a backend that degrades).
    """

    def __init__(
        self,
        name: str,
        clock: Any,
        *,
        latency_s: float = 0.1,
        sigma: float = 0.2,
        tail_p: float = 0.0,
        tail_x: float = 5.0,
        error_rate: float = 0.0,
        fail_latency_s: float | None = None,
        prompt_per_mtok: float = 0.0,
        sample_per_mtok: float = 0.0,
        prompt_tokens: int = 200,
        completion_tokens: int = 100,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.clock = clock
        self.latency_s = latency_s
        self.sigma = sigma
        self.tail_p = tail_p
        self.tail_x = tail_x
        self.error_rate = error_rate
        self.fail_latency_s = fail_latency_s
        self.costs = Costs(prompt_per_mtok=prompt_per_mtok, sample_per_mtok=sample_per_mtok)
        self.usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.calls = 0
        self.failures = 0

    def _step(self) -> float:
        with self._lock:
            self.calls += 1
            latency = self.latency_s * math.exp(self._rng.gauss(-(self.sigma**2) / 2, self.sigma))
            if self._rng.random() < self.tail_p:
                latency *= self.tail_x
            failed = self._rng.random() < self.error_rate
            if failed:
                self.failures += 1
        if failed:
            self.clock.advance(self.fail_latency_s if self.fail_latency_s is not None else latency)
            raise BackendError(f"{self.name}: simulated failure", retryable=True)
        self.clock.advance(latency)
        return latency

    def capabilities(self) -> Capabilities:
        return Capabilities(backend_id=self.name, supports_streaming=True, costs=self.costs)

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        from crucible_core.testing import scripted_completion

        latency = self._step()
        words = " ".join(f"w{i}" for i in range(self.usage.completion_tokens))
        out = scripted_completion(words, params, self.name, prompt_tokens=self.usage.prompt_tokens)
        return msgspec.structs.replace(out, latency_ms=latency * 1000.0)

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        c = self.complete(prompt, params)
        yield StreamChunk(text=c.text, finish_reason="stop", backend_id=self.name)

    def sample(self, prompt: Prompt, params: SamplingParams) -> Future[list[Completion]]:
        f: Future[list[Completion]] = Future()
        one = msgspec.structs.replace(params, n=1)
        f.set_result([self.complete(prompt, one) for _ in range(params.n)])
        return f

    def health_check(self) -> Health:
        return Health(ok=True)

    def metrics(self) -> Mapping[str, float]:
        return {"calls": float(self.calls), "failures": float(self.failures)}

    def close(self) -> None:
        return None

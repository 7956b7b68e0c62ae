"""Fixtures for crucible-hedging: a member whose latency per call is scripted (real sleeps)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from crucible_core.ir import (
    Capabilities,
    Completion,
    Health,
    Prompt,
    SamplingParams,
    StreamChunk,
)
from crucible_core.testing import scripted_completion


class Slow:
    """An ``InferenceBackend`` whose i-th call sleeps ``delays[i]`` seconds (the last repeats).

    ``fail_on`` lists call indices that raise. Answers name the call that made them
    (``"answer 1"`` came from the backup) unless ``same_answer``. Calls are counted and their start
    times recorded, so tests can see exactly when backups were fired.
    """

    def __init__(
        self, delays: Sequence[float], fail_on: Sequence[int] = (), *, same_answer: bool = False
    ) -> None:
        self.same_answer = same_answer
        self.delays = list(delays)
        self.fail_on = set(fail_on)
        self.calls = 0
        self.starts: list[float] = []
        self._lock = threading.Lock()

    def capabilities(self) -> Capabilities:
        return Capabilities(backend_id="slow", supports_streaming=True, supports_training=True)

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        with self._lock:
            i = self.calls
            self.calls += 1
            self.starts.append(time.monotonic())
        time.sleep(self.delays[min(i, len(self.delays) - 1)])
        if i in self.fail_on:
            raise RuntimeError(f"call {i} failed")
        n = 0 if self.same_answer else i
        return scripted_completion(f"answer {n} is ready", params, "slow")

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        c = self.complete(prompt, params)
        yield StreamChunk(text=c.text, tokens=c.tokens, finish_reason="stop")

    def health_check(self) -> Health:
        return Health(ok=True)

    def metrics(self) -> Mapping[str, float]:
        return {"calls": self.calls}

    def close(self) -> None:
        pass

    def create_session(self, job: Any) -> Any:  # a training backend's method, never hedged
        raise AssertionError("hedging reached a training call")


@pytest.fixture
def slow() -> Callable[..., Slow]:
    return Slow

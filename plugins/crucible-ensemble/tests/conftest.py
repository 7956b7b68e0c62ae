"""Fixtures for crucible-ensemble: scripted members with fixed answers, delays and failures.

A scripted member is a complete ``InferenceBackend`` (it passes the conformance kit)
whose answers are chosen by the test, so votes, early stop, quorums and deadlines can
be checked exactly. Slowness is real (``time.sleep``); failures are real exceptions
raised by the member. The end-to-end test uses the real crucible-local backend.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from msgspec.structs import replace

from crucible_core.ir import (
    Capabilities,
    Completion,
    Costs,
    Health,
    Prompt,
    SamplingParams,
    StreamChunk,
)
from crucible_core.testing import scripted_completion


class Scripted:
    """Answers ``answers[i % len]`` on its i-th call, after ``delay`` seconds."""

    def __init__(
        self,
        name: str,
        answers: list[str],
        *,
        delay: float = 0.0,
        fail: BaseException | None = None,
        logprob: float | None = None,
        price: float | None = None,
    ) -> None:
        self.name = name
        self.answers = answers
        self.delay = delay
        self.fail = fail
        self.logprob = logprob
        self.price = price
        self.calls = 0
        self._lock = threading.Lock()

    def capabilities(self) -> Capabilities:
        costs = None if self.price is None else Costs(sample_per_mtok=self.price)
        return Capabilities(backend_id=self.name, supports_streaming=True, costs=costs)

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        with self._lock:
            i = self.calls
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        text = self.answers[i % len(self.answers)] if params.temperature else self.answers[0]
        c = scripted_completion(text, params, self.name)
        if self.logprob is not None:
            c = replace(c, logprobs=[self.logprob] * len(c.tokens))
        return c

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        c = self.complete(prompt, params)
        yield StreamChunk(text=c.text, tokens=c.tokens, finish_reason=c.finish_reason)

    def health_check(self) -> Health:
        return Health(ok=self.fail is None, detail="" if self.fail is None else "broken")

    def metrics(self) -> Mapping[str, float]:
        return {"calls": self.calls}

    def close(self) -> None:
        pass


@pytest.fixture
def scripted() -> Callable[..., Scripted]:
    """``scripted(name, answers, delay=..., fail=..., logprob=..., price=...)``."""

    def make(name: str, answers: list[str] | str, **kw: Any) -> Scripted:
        return Scripted(name, [answers] if isinstance(answers, str) else answers, **kw)

    return make

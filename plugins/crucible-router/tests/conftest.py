"""Fixtures for crucible-router: an injected clock and members with scripted failures.

The members are simulated backends: their failures are scripted because a real
backend cannot be made to fail, time out or run out of capacity on cue; their
latencies advance the injected clock instead of sleeping, so breaker schedules
are exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
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
from crucible_core.records.events import Event, EventBus
from crucible_core.testing import scripted_completion


class Clock:
    """A clock tests move by hand: ``clock()`` is the time, ``advance(s)`` moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Scripted:
    """An ``InferenceBackend`` (and a stub trainer) whose i-th call does ``script[i]``.

    A script entry is ``None`` (answer), an exception (raised) or a number (answer
    after advancing ``clock`` by that many seconds). Past the script's end, ``then``
    applies (``None`` answers). ``calls`` counts complete/sample/stream calls.
    """

    def __init__(
        self,
        name: str,
        clock: Clock | None = None,
        script: Sequence[Any] = (),
        *,
        then: Any = None,
    ) -> None:
        self.name = name
        self.clock = clock
        self.script = list(script)
        self.then = then
        self.calls = 0
        self.training_calls: list[str] = []
        self.closed = False

    def _step(self) -> None:
        i = self.calls
        self.calls += 1
        action = self.script[i] if i < len(self.script) else self.then
        if isinstance(action, BaseException):
            raise action
        if isinstance(action, int | float) and self.clock is not None:
            self.clock.advance(float(action))

    def capabilities(self) -> Capabilities:
        return Capabilities(backend_id=self.name, supports_streaming=True, supports_training=True)

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        self._step()
        return scripted_completion(f"{self.name} answers this prompt", params, self.name)

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        if params.n != 1:
            from crucible_core.errors import UnsupportedError

            raise UnsupportedError("n > 1", hint="use n = 1")
        c = self.complete(prompt, params)
        yield StreamChunk(text=c.text, tokens=c.tokens, finish_reason=c.finish_reason)

    def sample(self, prompt: Prompt, params: SamplingParams) -> Any:
        from concurrent.futures import Future

        self._step()
        f: Future[list[Completion]] = Future()
        f.set_result([scripted_completion(f"{self.name} answers this prompt", params, self.name)])
        return f

    def health_check(self) -> Health:
        return Health(ok=True)

    def metrics(self) -> Mapping[str, float]:
        return {"calls": self.calls}

    def close(self) -> None:
        self.closed = True

    def create_session(self, job: Any) -> str:
        self.training_calls.append("create_session")
        self._step()
        return f"session on {self.name}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Recorder:
    """A real in-memory ``EventBus`` and the events it delivered, by kind."""

    def __init__(self) -> None:
        self.bus = EventBus(sink=False)
        self._events: list[Event] = []
        self.bus.subscribe(self._events.append, name="test")

    def events(self, kind: str | None = None) -> list[Event]:
        self.bus.drain()
        return [e for e in self._events if kind is None or e.kind == kind]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.bus.close()

"""`scripted_completion`: test doubles built on it keep the inference contract."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crucible_core.errors import UnsupportedError
from crucible_core.ir import Capabilities, Completion, Health, Prompt, SamplingParams, StreamChunk
from crucible_core.testing import check_inference_backend, scripted_completion


class Parrot:
    def capabilities(self) -> Capabilities:
        return Capabilities(backend_id="parrot", supports_streaming=True)

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        return scripted_completion("polly wants a cracker", params, "parrot")

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        c = self.complete(prompt, params)
        yield StreamChunk(text=c.text, tokens=c.tokens, finish_reason=c.finish_reason)

    def health_check(self) -> Health:
        return Health(ok=True)

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


def test_a_double_built_on_it_passes_the_kit() -> None:
    check_inference_backend(Parrot(), timeout=10)


def test_it_truncates_stops_and_refuses_n() -> None:
    cut = scripted_completion("a b c", SamplingParams(max_tokens=2), "x")
    assert (cut.text, cut.finish_reason, len(cut.tokens)) == ("a b", "length", 2)
    stopped = scripted_completion("a b c", SamplingParams(stop=[" c"]), "x")
    assert (stopped.text, stopped.finish_reason) == ("a b", "stop")
    with pytest.raises(UnsupportedError):
        scripted_completion("a", SamplingParams(n=2), "x")

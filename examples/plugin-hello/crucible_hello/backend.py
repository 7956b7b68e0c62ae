"""A toy backend: completes any prompt with a greeting, word by word."""

from collections.abc import Iterator

from crucible_core.ir import Completion, Health, Prompt, SamplingParams, StreamChunk, Usage
from crucible_hello.plugin import CAPS


class HelloBackend:
    def __init__(self, greeting: str = "Hello") -> None:
        self.greeting = greeting

    def capabilities(self):
        return CAPS

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        words = f"{self.greeting}, {prompt.text or 'world'}!".split()
        out = words[: params.max_tokens]
        end = "length" if len(out) < len(words) else "stop"
        return Completion(text=" ".join(out), tokens=[*range(len(out))], finish_reason=end,
                          usage=Usage(completion_tokens=len(out)), backend_id="hello")  # fmt: skip

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        done = self.complete(prompt, params)
        for i, word in enumerate(done.text.split(" ")):
            end = done.finish_reason if i == len(done.tokens) - 1 else None
            yield StreamChunk(text=" " * (i > 0) + word, tokens=[i], finish_reason=end)

    def health_check(self) -> Health:
        return Health(ok=True)

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None: ...

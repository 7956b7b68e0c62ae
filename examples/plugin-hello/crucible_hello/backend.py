"""A toy backend: completes any prompt with a greeting, word by word (one word = one token)."""

from collections.abc import Iterator

from crucible_core.errors import UnsupportedError
from crucible_core.ir import Completion, Health, Prompt, SamplingParams, StreamChunk, Usage
from crucible_hello.plugin import CAPS


class HelloBackend:
    def __init__(self, greeting: str = "Hello") -> None:
        self.greeting = greeting

    def capabilities(self):
        return CAPS

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        # Refuse what this backend cannot honour; never ignore a setting.
        if params.n != 1:
            raise UnsupportedError(f"hello: n = {params.n}, but complete returns one completion")
        if params.temperature != 0:
            raise UnsupportedError(
                f"hello: temperature = {params.temperature}, but greetings are deterministic",
                hint="set temperature = 0 (seed then changes nothing, so it is honoured)",
            )
        words = f"{self.greeting}, {prompt.text or 'world'}!".split()
        out, text, end = [], "", "stop"
        for word in words[: params.max_tokens]:
            out.append(word)
            text = " ".join(out)
            cuts = [i for i in (text.find(s) for s in params.stop if s) if i >= 0]
            if cuts:  # honour stop: end just before the first stop string
                text = text[: min(cuts)]
                break
        else:
            end = "length" if len(out) < len(words) else "stop"
        return Completion(text=text, tokens=[*range(len(out))], finish_reason=end,
                          usage=Usage(completion_tokens=len(out)), backend_id="hello")  # fmt: skip

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        done = self.complete(prompt, params)
        sent = ""
        for i in done.tokens:  # one chunk per word; the texts add up to done.text
            last = i == len(done.tokens) - 1
            upto = done.text if last else " ".join(done.text.split(" ")[: i + 1])
            yield StreamChunk(text=upto[len(sent):], tokens=[i],
                              finish_reason=done.finish_reason if last else None)  # fmt: skip
            sent = upto

    def health_check(self) -> Health:
        return Health(ok=True)

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None: ...

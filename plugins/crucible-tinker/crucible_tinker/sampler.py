"""Sampling through a tinker ``SamplingClient``: :class:`TinkerSampler`, and
:func:`open_sampler`, which makes one for a base model or a sampler checkpoint."""

from __future__ import annotations

import time
from concurrent.futures import Future as ConcurrentFuture
from typing import TYPE_CHECKING, Any

from crucible_core.contracts import Tokenizer
from crucible_core.errors import ConfigError
from crucible_core.ir.backend import CheckpointRef, Completion, Prompt, SamplingParams, Usage
from crucible_core.ir.training import ModelSpec
from crucible_tinker.client import Connection
from crucible_tinker.conversion import completion_text
from crucible_tinker.tokenizers import render_messages

if TYPE_CHECKING:
    from tinker import types

__all__ = ["TinkerSampler", "open_sampler"]


def open_sampler(
    conn: Connection, tokenizer: Tokenizer, model: ModelSpec, checkpoint: CheckpointRef | None
) -> TinkerSampler:
    """A sampler of the base ``model`` (``checkpoint=None``) or of a ``tinker://`` sampler
    checkpoint; blocks until the SDK made the client (bounded by the connection's timeout)."""
    service = conn.service()
    if checkpoint is None:

        def create() -> Any:
            return service.create_sampling_client(base_model=model.name).result()

        client = conn.blocking(create, f"creating a sampler for {model.name}")
        return TinkerSampler(conn, client, tokenizer, None, model.name)
    if checkpoint.kind != "sampler" or not checkpoint.uri.startswith("tinker://"):
        raise ConfigError(
            f"load_sampler needs a tinker:// sampler checkpoint, got {checkpoint.kind} "
            f"{checkpoint.uri!r}",
            hint="use the CheckpointRef of save_weights_for_sampler",
        )

    def create_from_path() -> Any:
        return service.create_sampling_client(model_path=checkpoint.uri).result()

    client = conn.blocking(create_from_path, f"creating a sampler for {checkpoint.uri}")
    return TinkerSampler(conn, client, tokenizer, checkpoint, model.name)


class TinkerSampler:
    """Samples from fixed weights through a tinker ``SamplingClient``."""

    def __init__(
        self,
        conn: Connection,
        client: Any,
        tokenizer: Tokenizer,
        checkpoint: CheckpointRef | None,
        base_model: str,
    ) -> None:
        self._conn = conn
        self._client = client
        self._tokenizer = tokenizer
        self._checkpoint = checkpoint
        self._base_model = base_model

    @property
    def checkpoint(self) -> CheckpointRef | None:
        return self._checkpoint

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def _tokens(self, prompt: Prompt) -> list[int]:
        if prompt.tokens is not None:
            return list(prompt.tokens)
        if prompt.text is not None:
            return self._tokenizer.encode(prompt.text)
        assert prompt.messages is not None
        return render_messages(self._tokenizer, prompt.messages)

    def sample(self, prompt: Prompt, params: SamplingParams) -> ConcurrentFuture[list[Completion]]:
        from tinker import types

        tokens = self._tokens(prompt)
        sp = types.SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k is not None else -1,
            seed=params.seed,
            # None keeps the model's own end-of-sequence stop; [] would disable it.
            stop=list(params.stop) if params.stop else None,
        )
        start = time.perf_counter()
        try:
            api = self._client.sample(
                prompt=types.ModelInput.from_ints(tokens),
                num_samples=params.n,
                sampling_params=sp,
            )
        except Exception as exc:
            raise self._conn.error(exc, "sample") from None

        def completion(seq: Any, latency: float) -> Completion:
            text, stopped = completion_text(self._tokenizer, seq.tokens, params.stop)
            return Completion(
                text=text,
                tokens=list(seq.tokens),
                logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
                finish_reason="length" if seq.stop_reason == "length" and not stopped else "stop",
                usage=Usage(prompt_tokens=len(tokens), completion_tokens=len(seq.tokens)),
                latency_ms=latency,
                backend_id="tinker",
                model=self._base_model,
            )

        def convert(response: types.SampleResponse) -> list[Completion]:
            latency = (time.perf_counter() - start) * 1000
            out = [completion(seq, latency) for seq in response.sequences]
            self._conn.record(out, latency)
            return out

        return self._conn.then(api.future(), convert, "sample")

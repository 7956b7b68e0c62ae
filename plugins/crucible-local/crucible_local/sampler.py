"""Sampling from fixed weights: the ``Sampler`` contract, plus streaming.

What a completion holds: ``tokens`` and ``logprobs`` are every generated
token up to and including the one that ended generation (the EOS token, or
the token that completed a stop string); ``logprobs`` are the model's own
log-probabilities of those tokens (temperature 1, no top-k/top-p), the
values a ``forward`` pass gives, as importance sampling needs. ``text`` is
the decoded completion without special tokens and cut before the first stop
string; it holds whole characters only (a byte-level token can end inside a
UTF-8 character, and an unfinished last character is left out rather than
shown as U+FFFD: :mod:`crucible_local.textdecode`). ``finish_reason`` is
``"stop"`` (EOS or a stop string) or ``"length"`` (``max_tokens`` reached).

Randomness: each request draws from its own generator seeded with
``params.seed`` (fresh entropy when unset), so a seeded request gives the same
completions whatever else runs; the ``n`` completions of one request are
different draws. ``temperature = 0`` is greedy (argmax).
"""

from __future__ import annotations

import inspect
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crucible_core.errors import BackendError, ConfigError, CrucibleError
from crucible_core.ir.backend import Completion, StreamChunk, Usage
from crucible_local.capabilities import BACKEND_ID
from crucible_local.textdecode import TextDecoder

if TYPE_CHECKING:
    import torch

    from crucible_core.ir.backend import CheckpointRef, Prompt, SamplingParams
    from crucible_local.tokenizer import LocalTokenizer

__all__ = ["LocalSampler"]


@dataclass
class _Row:
    decoder: TextDecoder
    tokens: list[int] = field(default_factory=list[int])
    logprobs: list[float] = field(default_factory=list[float])
    finish: str | None = None
    text: str = ""


def _cache_kwarg(model: Any) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    # transformers >= 5.2x names the KV cache ``cache``; earlier releases ``past_key_values``.
    return "cache" if "cache" in params else "past_key_values"


def _stop_ids(model: Any, tokenizer: LocalTokenizer) -> frozenset[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    gen_config = getattr(model, "generation_config", None)
    configured: Any = getattr(gen_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list | tuple):
        ids.update(int(i) for i in configured)  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    return frozenset(ids)


class LocalSampler:
    """Generates from one fixed model (base weights, an adapter, or a full fine-tune).

    ``sample`` runs on the sampler's own worker thread and returns a Future;
    ``stream`` and ``generate`` run on the caller's thread.
    """

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: LocalTokenizer,
        model_name: str,
        context_length: int,
        checkpoint: CheckpointRef | None = None,
    ) -> None:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self._model = model
        self._tokenizer = tokenizer
        self._model_name = model_name
        self._context_length = context_length
        self._checkpoint = checkpoint
        self._cache_kw = _cache_kwarg(model)
        self._stop_ids = _stop_ids(model, tokenizer)
        emb: Any = model.get_input_embeddings()
        self._vocab_rows = int(emb.num_embeddings)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._stats = {
            "requests": 0.0,
            "errors": 0.0,
            "prompt_tokens": 0.0,
            "completion_tokens": 0.0,
            "latency_ms_total": 0.0,
        }

    # -- the Sampler contract -------------------------------------------------

    @property
    def checkpoint(self) -> CheckpointRef | None:
        return self._checkpoint

    @property
    def tokenizer(self) -> LocalTokenizer:
        return self._tokenizer

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def torch_model(self) -> Any:
        """The underlying (eval-mode) torch module, for inspection."""
        return self._model

    def sample(self, prompt: Prompt, params: SamplingParams) -> Future[list[Completion]]:
        """``params.n`` completions of ``prompt``; errors in the request raise here."""
        ids = self.prompt_ids(prompt, params)
        with self._lock:
            if self._closed:
                raise BackendError("this sampler is closed", hint="load a new sampler")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="crucible-local-sampler")
            return self._executor.submit(self._generate_ids, ids, params)

    # -- synchronous API --------------------------------------------------------

    def generate(self, prompt: Prompt, params: SamplingParams) -> list[Completion]:
        """``sample`` on the caller's thread."""
        return self._generate_ids(self.prompt_ids(prompt, params), params)

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        """One completion, token by token; chunk texts add up to the completion's text.

        Text that might be the start of a stop string (or half a UTF-8
        character) is held back until it is known not to be.
        """
        if params.n != 1:
            raise ConfigError(
                f"params.n = {params.n}: a stream carries one completion",
                hint="set n = 1, or use Sampler.sample for several completions",
            )
        ids = self.prompt_ids(prompt, params)
        start = time.perf_counter()
        emitted = ""
        try:
            for (row,) in self._rows(ids, params, 1):
                token, logprob = row.tokens[-1], row.logprobs[-1]
                if row.finish is not None:
                    self._record(len(ids), [row], start)
                    yield StreamChunk(
                        text=row.text[len(emitted) :],
                        tokens=[token],
                        logprobs=[logprob],
                        finish_reason="stop" if row.finish == "stop" else "length",
                        backend_id=BACKEND_ID,
                    )
                    return
                visible = self._visible(row.decoder.text, params.stop)
                delta = visible[len(emitted) :] if len(visible) > len(emitted) else ""
                emitted += delta
                yield StreamChunk(
                    text=delta, tokens=[token], logprobs=[logprob], backend_id=BACKEND_ID
                )
        except Exception:
            self._stats["errors"] += 1
            raise

    def logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """Next-token logits ``[len(tokens), vocab]`` for one sequence (float32, no grad)."""
        import torch

        with torch.inference_mode():
            out = self._model(input_ids=torch.tensor([list(tokens)], dtype=torch.long))
            return out.logits[0].float()

    def stats(self) -> dict[str, float]:
        """Counters since creation: requests, errors, tokens, total latency."""
        return dict(self._stats)

    def close(self) -> None:
        """Finish queued requests and stop the worker thread."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # -- internals --------------------------------------------------------------

    def prompt_ids(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """The prompt's token ids, checked against the vocabulary and the context."""
        ids = self._tokenizer.prompt_tokens(prompt)
        if not ids:
            bos = self._tokenizer.bos_token_id
            if bos is None:
                raise ConfigError(
                    "prompt: the prompt is empty and the tokenizer has no BOS token to start from",
                    hint="give the prompt some text",
                )
            ids = [bos]
        top = max(ids)
        if top >= self._vocab_rows:
            raise ConfigError(
                f"prompt.tokens holds token id {top}; model {self._model_name!r} has "
                f"{self._vocab_rows} embedding rows"
            )
        if len(ids) + params.max_tokens > self._context_length:
            room = self._context_length - len(ids)
            raise ConfigError(
                f"params.max_tokens = {params.max_tokens}: the prompt ({len(ids)} tokens) plus "
                f"max_tokens exceeds the context of model {self._model_name!r} "
                f"({self._context_length} tokens)",
                hint=(
                    f"set max_tokens <= {room}"
                    if room > 0
                    else "shorten the prompt: it fills the context already"
                ),
            )
        return ids

    def _generate_ids(self, ids: list[int], params: SamplingParams) -> list[Completion]:
        start = time.perf_counter()
        try:
            rows: list[_Row] = []
            for step_rows in self._rows(ids, params, params.n):
                rows = step_rows
        except CrucibleError:
            self._stats["errors"] += 1
            raise
        except Exception as exc:
            self._stats["errors"] += 1
            raise BackendError(
                f"sampling from {self._model_name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        latency = self._record(len(ids), rows, start)
        return [
            Completion(
                text=row.text,
                tokens=row.tokens,
                logprobs=row.logprobs,
                finish_reason="stop" if row.finish == "stop" else "length",
                usage=Usage(prompt_tokens=len(ids), completion_tokens=len(row.tokens)),
                latency_ms=latency,
                backend_id=BACKEND_ID,
                model=self._model_name,
            )
            for row in rows
        ]

    def _record(self, prompt_tokens: int, rows: Sequence[_Row], start: float) -> float:
        latency = (time.perf_counter() - start) * 1000
        self._stats["requests"] += 1
        self._stats["prompt_tokens"] += prompt_tokens
        self._stats["completion_tokens"] += sum(len(r.tokens) for r in rows)
        self._stats["latency_ms_total"] += latency
        return latency

    @staticmethod
    def _visible(text: str, stops: Sequence[str]) -> str:
        # The decoder's text ends at a character boundary; hold back a possible stop's start.
        hold = 0
        for stop in stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        return text[: len(text) - hold]

    def _forward(self, input_ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": True}
        if cache is not None:
            kwargs[self._cache_kw] = cache
        out = self._model(**kwargs)
        return out.logits[:, -1, :].float(), getattr(out, self._cache_kw)

    def _rows(self, ids: list[int], params: SamplingParams, n: int) -> Iterator[list[_Row]]:
        """Generate ``n`` rows in one batch; yield them after every step until all finish."""
        import torch

        generator = torch.Generator()
        generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(62))
        rows = [_Row(decoder=TextDecoder(self._tokenizer)) for _ in range(n)]
        stops = [s for s in params.stop if s]
        with torch.inference_mode():
            logits, cache = self._forward(torch.tensor([ids] * n, dtype=torch.long), None)
            for step in range(params.max_tokens):
                chosen = self._choose(logits, params, generator)
                logprobs = torch.log_softmax(logits, dim=-1).gather(1, chosen[:, None])[:, 0]
                for row, token, logprob in zip(
                    rows, chosen.tolist(), logprobs.tolist(), strict=True
                ):
                    if row.finish is None:
                        self._advance(row, int(token), float(logprob), stops, params.max_tokens)
                yield rows
                if all(row.finish is not None for row in rows):
                    return
                if step + 1 < params.max_tokens:
                    logits, cache = self._forward(chosen[:, None], cache)

    def _advance(
        self, row: _Row, token: int, logprob: float, stops: Sequence[str], max_tokens: int
    ) -> None:
        row.tokens.append(token)
        row.logprobs.append(logprob)
        row.decoder.push(token)
        if token in self._stop_ids:
            row.finish = "stop"
            row.text = row.decoder.text
            return
        if stops:
            text = row.decoder.text
            cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
            if cuts:
                row.finish = "stop"
                row.text = text[: min(cuts)]
                return
        if len(row.tokens) >= max_tokens:
            row.finish = "length"
            row.text = row.decoder.text

    @staticmethod
    def _choose(
        logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
    ) -> torch.Tensor:
        import torch

        if params.temperature == 0:
            return logits.argmax(dim=-1)
        scores = logits / params.temperature
        if params.top_k is not None and params.top_k < scores.shape[-1]:
            kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1.0:
            ordered, index = torch.sort(scores, dim=-1, descending=True)
            probs = torch.softmax(ordered, dim=-1)
            # Drop a token once the tokens before it already cover top_p.
            drop = (probs.cumsum(dim=-1) - probs) > params.top_p
            ordered = ordered.masked_fill(drop, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(-1, index, ordered)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

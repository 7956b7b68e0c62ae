"""Sampling sessions and sample requests, over crucible Samplers.

A sampling session (``{session_id}:sample:{seq}``) is a Sampler: of a base
model (opened once per model and shared), of sampler weights saved through
``save_weights_for_sampler``, or loaded from a ``sampler_weights`` checkpoint.
``asample`` validates the prompt and parameters against the served backend,
runs the sample on a small thread pool and resolves a tinker future with a
``SampleResponse``; a sample resubmitted with the same
``(sampling_session_id, seq_id)`` gets the first one's future.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from crucible_core.contracts import Sampler
from crucible_core.errors import ConfigError, NotFound, ValidationError
from crucible_core.ir import convert
from crucible_core.ir.backend import Completion, Prompt, SamplingParams
from crucible_core.ir.training import ModelSpec
from crucible_tinker.server import ids
from crucible_tinker.server.checkpoint_index import CheckpointIndex
from crucible_tinker.server.dispatch import classify
from crucible_tinker.server.futures import PROTOBUF, Entry, FutureStore, Payload
from crucible_tinker.server.payloads import (
    encode_sample_response,
)
from crucible_tinker.server.served import ServedBackend
from crucible_tinker.server.sessions import SessionTable
from crucible_tinker.server.wire import (
    CreateSamplingSessionRequest,
    PromptBody,
    SampleRequest,
    SamplingParamsBody,
)

__all__ = ["SamplerEntry", "Sampling"]


@dataclass
class SamplerEntry:
    """One sampling session: its Sampler, base model and checkpoint path (if any)."""

    sampling_session_id: str
    sampler: Sampler
    base_model: str
    model_path: str | None


class Sampling:
    """The server's sampling sessions and sample requests; thread-safe."""

    def __init__(
        self,
        served: ServedBackend,
        sessions: SessionTable,
        checkpoints: CheckpointIndex,
        futures: FutureStore,
        stats: dict[str, int],
    ) -> None:
        self.served = served
        self.sessions = sessions
        self.checkpoints = checkpoints
        self.futures = futures
        self.stats = stats
        self._lock = threading.Lock()
        self._samplers: dict[str, SamplerEntry] = {}
        self._by_seq: dict[tuple[str, int], str] = {}
        self._requests: dict[tuple[str, int], Entry] = {}
        self._base_samplers: dict[str, Sampler] = {}
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tinker-srv")

    def __len__(self) -> int:
        with self._lock:
            return len(self._samplers)

    def close(self) -> None:
        """Stop the sampling pool (samples not yet started are cancelled)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, session_id: str, seq: int, entry: SamplerEntry) -> None:
        """Register ``entry`` as sampling session ``seq`` of ``session_id``."""
        with self._lock:
            self._samplers[entry.sampling_session_id] = entry
            self._by_seq[(session_id, seq)] = entry.sampling_session_id

    def create_session(self, body: CreateSamplingSessionRequest) -> dict[str, Any]:
        """Blocking (may load a model): call from a worker thread."""
        session_id = body.session_id
        self.sessions.session(session_id)
        seq = body.sampling_session_seq_id
        with self._lock:
            known = self._by_seq.get((session_id, seq))
        if known is not None:
            self.stats["duplicate_submissions"] += 1
            return {"type": "create_sampling_session", "sampling_session_id": known}
        model_path = body.model_path
        base_model = body.base_model
        backend = self.served.backend
        if model_path:
            record = self.checkpoints.get(model_path)
            sampler = record.sampler
            if sampler is None:
                if record.ref.kind != "sampler":
                    raise ConfigError(
                        f"{record.uri} holds training state; sample from sampler_weights"
                    )
                sampler = backend.load_sampler(ModelSpec(name=record.base_model), record.ref)
                record.sampler = sampler
            base = record.base_model
        elif base_model:
            self.served.check_base_model(base_model)
            with self._lock:
                sampler = self._base_samplers.get(base_model)
            if sampler is None:
                sampler = backend.load_sampler(ModelSpec(name=base_model), None)
                with self._lock:
                    self._base_samplers.setdefault(base_model, sampler)
            base = base_model
        else:
            raise ConfigError("give `model_path` or `base_model`")
        ssid = ids.sampling_session_id(session_id, seq)
        self.add(session_id, seq, SamplerEntry(ssid, sampler, base, model_path or None))
        return {"type": "create_sampling_session", "sampling_session_id": ssid}

    def get_sampler(self, sampling_session_id: str) -> dict[str, Any]:
        with self._lock:
            entry = self._samplers.get(sampling_session_id)
        if entry is None:
            raise NotFound(f"unknown sampler {sampling_session_id!r}")
        out: dict[str, Any] = {
            "sampler_id": entry.sampling_session_id,
            "base_model": entry.base_model,
        }
        if entry.model_path:
            out["model_path"] = entry.model_path
        return out

    def asample(self, body: SampleRequest) -> dict[str, Any]:
        ssid = body.sampling_session_id
        seq_id = body.seq_id
        with self._lock:
            sampler_entry = self._samplers.get(ssid)
            previous = self._requests.get((ssid, seq_id))
        if sampler_entry is None:
            raise NotFound(f"unknown sampling session {ssid!r}")
        n = body.num_samples
        if previous is not None and not previous.failed:
            self.stats["duplicate_submissions"] += 1
            return {
                "request_id": previous.request_id,
                "sample_sequence_ids": ids.sequence_ids(previous.request_id, n),
            }
        wants_prompt = bool(body.prompt_logprobs or body.topk_prompt_logprobs)
        wants_logits = wants_prompt or bool(body.topk_sample_logprobs)
        scorer = _prompt_scorer(sampler_entry.sampler) if wants_logits else None
        if wants_logits and scorer is None:
            raise ConfigError(
                "prompt logprobs and top-k logprobs need a sampler that exposes next-token "
                f"logits (the {self.served.name!r} backend's sampler does not)"
            )
        if body.target_prompt_logprobs is not None or body.prompt_alt_tokens_k:
            raise ConfigError("target_prompt_logprobs / prompt_alt_tokens_k are not supported")
        tokens = self._prompt_tokens(body.prompt)
        sampler = sampler_entry.sampler
        params = self._sampling_params(body.sampling_params or SamplingParamsBody(), n, sampler)
        entry = self.futures.create("sample")
        with self._lock:
            self._requests[(ssid, seq_id)] = entry

        def run() -> None:
            try:
                completions: list[Completion] = sampler.sample(
                    Prompt(tokens=tokens), params
                ).result()
                logits = scorer(tokens) if scorer is not None and wants_prompt else None
                last_n = body.prompt_logprobs_last_n
                scored = (
                    prompt_logprobs(logits, tokens, last_n)
                    if logits is not None and body.prompt_logprobs
                    else None
                )
                topk = (
                    topk_prompt_logprobs(logits, body.topk_prompt_logprobs, last_n)
                    if logits is not None and body.topk_prompt_logprobs
                    else None
                )
                k = body.topk_sample_logprobs
                per_sequence = (
                    [
                        topk_sample_logprobs(scorer([*tokens, *c.tokens]), k, len(tokens))
                        for c in completions
                    ]
                    if scorer is not None and k
                    else None
                )
                entry.resolve(
                    Payload(
                        encode_sample_response(completions, scored, topk, per_sequence), PROTOBUF
                    )
                )
            except BaseException as exc:
                message, category = classify(exc)
                entry.fail(message, category)

        self._pool.submit(run)
        return {
            "request_id": entry.request_id,
            "sample_sequence_ids": ids.sequence_ids(entry.request_id, n),
        }

    def _prompt_tokens(self, prompt: PromptBody) -> list[int]:
        tokens: list[int] = []
        for chunk in prompt.chunks:
            if chunk.type != "encoded_text":
                raise ConfigError("only encoded_text prompt chunks are supported")
            tokens.extend(chunk.tokens)
        if not tokens:
            raise ConfigError("the prompt is empty")
        limit = self.served.context_length
        if limit is not None and len(tokens) > limit:
            raise ConfigError(f"the prompt has {len(tokens)} tokens; the context length is {limit}")
        return tokens

    def _sampling_params(self, raw: SamplingParamsBody, n: int, sampler: Sampler) -> SamplingParams:
        out: dict[str, Any] = {"n": n}
        limit = self.served.context_length
        if raw.max_tokens is not None:
            if limit is not None and raw.max_tokens > limit:
                raise ConfigError(
                    f"sampling_params.max_tokens {raw.max_tokens} is above the context "
                    f"length ({limit})"
                )
            out["max_tokens"] = raw.max_tokens
        for key in ("temperature", "top_p", "seed"):
            value = getattr(raw, key)
            if value is not None:
                out[key] = value
        if raw.top_k is not None and raw.top_k > 0:
            out["top_k"] = raw.top_k
        stop = raw.stop
        if isinstance(stop, str):
            out["stop"] = [stop]
        elif stop:
            if all(isinstance(s, str) for s in stop):
                out["stop"] = stop
            elif all(isinstance(s, int) for s in stop):
                # Stop tokens: the crucible contract stops on strings, so decode them.
                out["stop"] = [sampler.tokenizer.decode([int(s)]) for s in stop]
            else:
                raise ConfigError("`stop` must be a string, a list of strings or of token ids")
        try:
            return convert(out, SamplingParams)
        except ValidationError as exc:
            raise ConfigError(f"bad sampling_params: {exc}") from None


def _prompt_scorer(sampler: Any) -> Callable[[Sequence[int]], Any] | None:
    """The sampler's ``logits(tokens)`` (next-token logits ``[len, vocab]``), if it has one.

    Not part of the crucible Sampler contract: crucible-local's sampler has it, and a
    backend whose sampler lacks it gets a clear refusal for prompt logprobs.
    """
    logits = getattr(sampler, "logits", None)
    return logits if callable(logits) else None


def prompt_logprobs(logits: Any, tokens: Sequence[int], last_n: int | None) -> list[float]:
    """Tinker's ``prompt_logprobs``: entry ``i`` is log p(tokens[i] | tokens[:i]).

    The first token has no context, so it is NaN (the SDK reads NaN as ``None``), as is
    every token before the last ``last_n`` when only those are asked for.
    """
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    targets = torch.tensor(list(tokens[1:]), dtype=torch.long)
    scored = logp[: len(tokens) - 1].gather(1, targets.unsqueeze(1)).squeeze(1).tolist()
    out = [math.nan, *scored]
    if last_n is not None:
        cut = max(0, len(out) - last_n)
        out[:cut] = [math.nan] * cut
    return out


#: What the SDK reads as "not computed" in a top-k row (``tinker.types.topk_logprobs``).
MASK_LOGPROB = -99999.0


def topk_prompt_logprobs(logits: Any, k: int, last_n: int | None) -> tuple[Any, Any]:
    """Tinker's ``topk_prompt_logprobs``: row ``i`` holds the ``k`` likeliest tokens at
    prompt position ``i`` (given ``tokens[:i]``) and their logprobs, as int32 / float32
    arrays ``[len(prompt), k]``. Row 0, and rows before the last ``last_n``, are masked
    (token 0, ``MASK_LOGPROB``), which the SDK reads as ``None``."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    k = min(k, logp.shape[-1])
    top = torch.topk(logp[:-1], k, dim=-1)
    n = logp.shape[0]
    ids = torch.zeros((n, k), dtype=torch.int32)
    values = torch.full((n, k), MASK_LOGPROB, dtype=torch.float32)
    first = 1 if last_n is None else max(1, n - last_n)
    ids[first:] = top.indices[first - 1 :].to(torch.int32)
    values[first:] = top.values[first - 1 :]
    return ids.numpy(), values.numpy()


def topk_sample_logprobs(logits: Any, k: int, prompt_len: int) -> tuple[Any, Any]:
    """Tinker's ``topk_sample_logprobs`` for one sequence: row ``j`` holds the ``k``
    likeliest tokens at generated position ``j`` (given the prompt and the first ``j``
    generated tokens) and their logprobs, int32 / float32 ``[len(generated), k]``.

    ``logits`` are the sampler's next-token logits over prompt + generated tokens: the
    same weights the tokens were sampled from, scored at temperature 1 (the model's
    distribution, like the sampled-token logprobs).
    """
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    k = min(k, logp.shape[-1])
    rows = logp[prompt_len - 1 : logp.shape[0] - 1]
    top = torch.topk(rows, k, dim=-1)
    return top.indices.to(torch.int32).numpy(), top.values.numpy()

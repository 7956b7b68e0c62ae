"""``check_inference_backend``: the inference contract, call by call.

What it asserts, in order (each failure names the call and the rule):

1. ``capabilities()`` is a :class:`~crucible_core.ir.Capabilities` with a backend_id.
2. A greedy ``complete`` (temperature 0, max_tokens 8) gives a Completion
   within max_tokens, finish_reason ``stop``/``length`` (``length`` only when
   max_tokens tokens were generated), ``backend_id`` equal to the
   capabilities', usage counting the tokens, logprobs per token when
   declared, and the same tokens when asked again.
3. Truncation: asking for one token fewer than that completion had gives
   its first tokens with ``finish_reason = "length"``.
4. Stop sequences: a stop string taken from that completion ends the text
   just before its first occurrence with ``finish_reason = "stop"``, or is
   refused with ``UnsupportedError``.
5. ``n = 2``: ``complete`` returns one Completion, so it must refuse.
6. Streaming (when declared): chunks are StreamChunk values, only the last
   carries finish_reason, and texts and tokens concatenate to what
   ``complete`` returns for the same request (with and without the stop
   string); ``n = 2`` is refused or streams indexes 0 and 1.
7. ``health_check()`` is ok; ``metrics()`` maps names to numbers.

Every call is bounded by ``timeout`` seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crucible_core.contracts import InferenceBackend
from crucible_core.ir.backend import (
    Capabilities,
    Completion,
    Health,
    Prompt,
    SamplingParams,
    StreamChunk,
)
from crucible_core.testing._backend import (
    check_capabilities,
    check_completion,
    refused,
    stop_probe,
)
from crucible_core.testing._guard import Calls, ConformanceError, require

__all__ = ["check_inference_backend"]


def check_inference_backend(
    backend: Any, *, prompt: Prompt | None = None, timeout: float = 120.0
) -> None:
    """Exercise the inference contract (see the module docstring for every rule).

    ``prompt`` must make the backend generate at least two tokens of
    visible text greedily (default ``Prompt(text="Hello")``); ``timeout``
    bounds every call in seconds.
    """
    require(
        isinstance(backend, InferenceBackend),
        "an inference backend needs capabilities, complete, stream, health_check, metrics, close",
    )
    p = prompt or Prompt(text="Hello")
    with Calls(timeout) as calls:
        caps = check_capabilities(
            calls("capabilities()", "capabilities() describes the backend", backend.capabilities),
            training=False,
        )
        greedy = SamplingParams(max_tokens=8, temperature=0.0)
        first = _complete(calls, backend, p, greedy, caps, "a greedy completion succeeds")
        require(
            first.backend_id == caps.backend_id,
            f"Completion.backend_id ({first.backend_id!r}) must equal Capabilities.backend_id "
            f"({caps.backend_id!r})",
        )
        require(
            first.usage.completion_tokens == len(first.tokens),
            "Completion.usage.completion_tokens must count the generated tokens",
        )
        second = _complete(calls, backend, p, greedy, caps, "greedy completion is repeatable")
        require(
            second.tokens == first.tokens,
            "greedy completion (temperature 0) must be deterministic",
        )
        require(
            len(first.tokens) >= 2 and stop_probe(first.text) is not None,
            f"the greedy completion of {p!r} is {first.text!r} ({len(first.tokens)} tokens): the "
            "kit needs at least 2 tokens of visible text to check truncation and stop sequences; "
            "pass a prompt= that makes the backend generate more",
        )
        _check_truncation(calls, backend, p, first, caps)
        stop, stopped = _check_stop(calls, backend, p, first, caps)
        _check_n_refused(calls, backend, p)
        if caps.supports_streaming:
            _check_stream(calls, backend, p, greedy, first)
            if stopped is not None:
                _check_stream(calls, backend, p, stop, stopped)
            _check_stream_n(calls, backend, p)
        health = calls("health_check()", "a working backend is healthy", backend.health_check)
        require(
            isinstance(health, Health) and health.ok, f"health_check must be ok, got {health!r}"
        )
        metrics = calls("metrics()", "metrics() maps names to numbers", backend.metrics)
        require(isinstance(metrics, Mapping), "metrics() must return a mapping of name -> number")
        for key, value in metrics.items():  # pyright: ignore[reportUnknownVariableType]
            require(
                isinstance(key, str) and isinstance(value, int | float),
                f"metrics()[{key!r}] must be a number",
            )


def _describe(params: SamplingParams) -> str:
    parts = [f"max_tokens={params.max_tokens}", f"temperature={params.temperature}"]
    if params.stop:
        parts.append(f"stop={params.stop}")
    if params.n != 1:
        parts.append(f"n={params.n}")
    return ", ".join(parts)


def _complete(
    calls: Calls,
    backend: Any,
    prompt: Prompt,
    params: SamplingParams,
    caps: Capabilities,
    rule: str,
) -> Completion:
    call = f"complete({_describe(params)})"
    return check_completion(calls(call, rule, backend.complete, prompt, params), params, caps, call)


def _check_truncation(
    calls: Calls, backend: Any, prompt: Prompt, first: Completion, caps: Capabilities
) -> None:
    params = SamplingParams(max_tokens=len(first.tokens) - 1, temperature=0.0)
    rule = "a completion cut by max_tokens ends with finish_reason 'length'"
    cut = _complete(calls, backend, prompt, params, caps, rule)
    call = f"complete({_describe(params)})"
    require(
        cut.finish_reason == "length",
        f"{call}: max_tokens cut the greedy completion {first.text!r} short, so finish_reason "
        f"must be 'length', got {cut.finish_reason!r}",
    )
    require(
        cut.tokens == first.tokens[: params.max_tokens],
        f"{call}: a greedy completion cut by max_tokens must be the first tokens of the longer "
        f"one: {cut.tokens} is not a prefix of {first.tokens}",
    )


def _check_stop(
    calls: Calls, backend: Any, prompt: Prompt, first: Completion, caps: Capabilities
) -> tuple[SamplingParams, Completion | None]:
    probe = stop_probe(first.text)
    assert probe is not None  # required by the caller
    params = SamplingParams(max_tokens=8, temperature=0.0, stop=[probe])
    call = f"complete({_describe(params)})"
    rule = "a stop sequence ends the completion before it, or is refused"
    result, exc = calls.attempt(call, rule, backend.complete, prompt, params)
    if refused(exc, call, f"stop={params.stop}"):
        return params, None
    stopped = check_completion(result, params, caps, call)
    expected = first.text[: first.text.index(probe)]
    require(
        probe not in stopped.text and stopped.text == expected,
        f"{call}: the greedy text {first.text!r} must end before the stop string {probe!r}, "
        f"giving {expected!r}; got {stopped.text!r} (honour stop, or raise UnsupportedError)",
    )
    require(
        stopped.finish_reason == "stop",
        f"{call}: a completion ended by a stop string must have finish_reason 'stop', "
        f"got {stopped.finish_reason!r}",
    )
    return params, stopped


def _check_n_refused(calls: Calls, backend: Any, prompt: Prompt) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0, n=2)
    call = f"complete({_describe(params)})"
    result, exc = calls.attempt(
        call,
        "complete returns one Completion, so n > 1 is refused",
        backend.complete,
        prompt,
        params,
    )
    if refused(exc, call, "n=2"):
        return
    raise ConformanceError(
        f"{call} returned {type(result).__name__} instead of refusing: complete gives one "
        "completion, so n > 1 must raise UnsupportedError (a Sampler returns n completions)"
    )


def _stream(calls: Calls, backend: Any, prompt: Prompt, params: SamplingParams) -> list[Any]:
    return calls(
        f"stream({_describe(params)})",
        "a stream yields StreamChunk values",
        lambda: list(backend.stream(prompt, params)),
    )


def _check_stream(
    calls: Calls, backend: Any, prompt: Prompt, params: SamplingParams, done: Completion
) -> None:
    call = f"stream({_describe(params)})"
    chunks = _stream(calls, backend, prompt, params)
    require(bool(chunks), f"{call} must yield at least one chunk")
    require(
        all(isinstance(c, StreamChunk) for c in chunks), f"{call} must yield StreamChunk values"
    )
    require(
        chunks[-1].finish_reason is not None,
        f"{call}: the last StreamChunk must carry finish_reason",
    )
    require(
        all(c.finish_reason is None for c in chunks[:-1]),
        f"{call}: only the last StreamChunk may carry finish_reason",
    )
    text = "".join(c.text for c in chunks)
    require(
        text == done.text,
        f"{call}: streamed text must equal the completed text for the same greedy request: "
        f"{text!r} != {done.text!r}",
    )
    tokens = [t for c in chunks for t in c.tokens]
    require(
        tokens == done.tokens,
        f"{call}: the chunks' tokens must concatenate to the completion's tokens: "
        f"{tokens} != {done.tokens}",
    )
    require(
        chunks[-1].finish_reason == done.finish_reason,
        f"{call}: the stream ended with finish_reason {chunks[-1].finish_reason!r}, the "
        f"completion with {done.finish_reason!r}",
    )


def _check_stream_n(calls: Calls, backend: Any, prompt: Prompt) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0, n=2)
    call = f"stream({_describe(params)})"
    chunks, exc = calls.attempt(
        call, "n > 1 is streamed as indexes 0..n-1, or refused",
        lambda: list(backend.stream(prompt, params)),
    )  # fmt: skip
    if refused(exc, call, "n=2"):
        return
    items: list[Any] = chunks or []
    indexes = {getattr(c, "index", None) for c in items}
    require(
        indexes == {0, 1},
        f"{call} must stream completions with index 0 and 1 (or raise UnsupportedError); "
        f"got indexes {sorted(indexes, key=str)}",
    )
    for i in (0, 1):
        own = [c for c in items if c.index == i]
        require(
            own[-1].finish_reason is not None,
            f"{call}: the last chunk of completion {i} must carry finish_reason",
        )

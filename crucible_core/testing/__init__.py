"""The conformance kit: checks a plugin author calls from their own tests.

Each ``check_*`` function exercises one contract of
:mod:`crucible_core.contracts` against a real backend and raises
:class:`ConformanceError` (an ``AssertionError``, so pytest shows it as a test
failure) naming the call and the broken rule::

    from crucible_core.testing import check_training_backend

    def test_my_backend_conforms(tmp_path):
        check_training_backend(MyBackend(), job)

This module is part of the supported API; its checks only get stricter in
minor releases when the contract documents a rule they did not yet check.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any

from crucible_core.contracts import (
    Future,
    InferenceBackend,
    Sampler,
    Tokenizer,
    TrainingBackend,
    TrainingSession,
)
from crucible_core.ir.backend import (
    AdamParams,
    Capabilities,
    CheckpointRef,
    Completion,
    Datum,
    ForwardBackwardResult,
    Health,
    LossFnInputs,
    OptimStepResult,
    Prompt,
    SamplingParams,
    StreamChunk,
)
from crucible_core.ir.training import Loss, TrainingJob
from crucible_core.plugins import PluginHost, reset_host

__all__ = [
    "DEFAULT_HEAVY_MODULES",
    "ConformanceError",
    "check_inference_backend",
    "check_light_import",
    "check_training_backend",
    "isolated_host",
    "make_datums",
]

#: Modules a plugin's ``plugin.py`` must not pull in at import time.
DEFAULT_HEAVY_MODULES: tuple[str, ...] = (
    "torch",
    "numpy",
    "transformers",
    "peft",
    "tinker",
    "networkx",
    "fastapi",
    "starlette",
    "uvicorn",
    "pyarrow",
    "datasets",
)

_TEXT = "The quick brown fox jumps over the lazy dog. " * 2


class ConformanceError(AssertionError):
    """A plugin broke a contract rule; the message names the call and the rule."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


def _resolve(future: Any, call: str, timeout: float) -> Any:
    _require(
        isinstance(future, Future),
        f"{call} must return a Future (an object with result() and done()), "
        f"got {type(future).__name__}",
    )
    try:
        return future.result(timeout=timeout)
    except TimeoutError as exc:
        raise ConformanceError(f"{call} did not resolve within {timeout} s") from exc


def make_datums(tokenizer: Tokenizer, texts: Iterable[str], *, max_len: int = 64) -> list[Datum]:
    """Next-token-prediction datums over ``texts`` with every target weighted 1."""
    out: list[Datum] = []
    for text in texts:
        ids = tokenizer.encode(text)[: max_len + 1]
        if len(ids) < 2:
            raise ConformanceError(f"tokenizer.encode({text!r}) gave fewer than 2 tokens")
        out.append(
            Datum(
                model_input=ids[:-1],
                loss_fn_inputs=LossFnInputs(target_tokens=ids[1:], weights=[1.0] * (len(ids) - 1)),
            )
        )
    return out


def _check_tokenizer(tok: Any) -> Tokenizer:
    _require(
        isinstance(tok, Tokenizer),
        "get_tokenizer must return a Tokenizer (name, vocab_size, eos_token_id, chat_template, "
        f"encode, decode); got {type(tok).__name__}",
    )
    ids: list[Any] = list(tok.encode("hello world"))
    _require(all(isinstance(i, int) for i in ids), "Tokenizer.encode must return a list of int")
    _require(
        all(0 <= i < tok.vocab_size for i in ids),
        "Tokenizer.encode returned ids outside [0, vocab_size)",
    )
    _require("hello" in tok.decode(ids), "Tokenizer.decode(encode('hello world')) lost the text")
    return tok


def _check_capabilities(caps: Any, *, training: bool) -> Capabilities:
    _require(
        isinstance(caps, Capabilities),
        f"capabilities() must return crucible_core.ir.Capabilities, got {type(caps).__name__}",
    )
    _require(bool(caps.backend_id), "Capabilities.backend_id must not be empty")
    if training:
        _require(caps.supports_training, "a TrainingBackend must declare supports_training=True")
        _require(
            "cross_entropy" in caps.losses,
            f"a TrainingBackend must support the cross_entropy loss; declares {caps.losses}",
        )
        _require(bool(caps.adapters), "Capabilities.adapters must list what the backend trains")
    return caps


def _check_fb(result: Any, batch: Sequence[Datum], call: str) -> ForwardBackwardResult:
    _require(
        isinstance(result, ForwardBackwardResult),
        f"{call} must resolve to ForwardBackwardResult, got {type(result).__name__}",
    )
    _require(math.isfinite(result.loss), f"{call} returned a non-finite loss {result.loss}")
    _require(
        len(result.logprobs) == len(batch),
        f"{call} must return one logprobs list per datum ({len(batch)}), "
        f"got {len(result.logprobs)}",
    )
    for i, (lp, datum) in enumerate(zip(result.logprobs, batch, strict=True)):
        _require(
            len(lp) == len(datum.loss_fn_inputs.target_tokens),
            f"{call}: logprobs[{i}] has {len(lp)} entries for "
            f"{len(datum.loss_fn_inputs.target_tokens)} target tokens",
        )
        _require(
            all(v <= 1e-4 for v in lp), f"{call}: logprobs[{i}] has values > 0 (not log-probs)"
        )
    return result


def _check_completions(
    completions: Any, params: SamplingParams, caps: Capabilities, call: str
) -> list[Completion]:
    _require(isinstance(completions, list), f"{call} must resolve to a list of Completion")
    items = [c for c in completions if isinstance(c, Completion)]  # pyright: ignore[reportUnknownVariableType]
    _require(
        len(items) == len(completions),  # pyright: ignore[reportUnknownArgumentType]
        f"{call} must resolve to Completion values only",
    )
    _require(
        len(items) == params.n, f"{call} must return n={params.n} completions, got {len(items)}"
    )
    for c in items:
        _check_completion(c, params, caps, call)
    return items


def _check_completion(c: Completion, params: SamplingParams, caps: Capabilities, call: str) -> None:
    _require(
        len(c.tokens) <= params.max_tokens,
        f"{call} produced {len(c.tokens)} tokens; max_tokens was {params.max_tokens}",
    )
    _require(
        c.finish_reason in ("stop", "length"),
        f"{call}: finish_reason must be 'stop' or 'length' on success, got {c.finish_reason!r}",
    )
    if caps.supports_logprobs:
        _require(
            c.logprobs is not None and len(c.logprobs) == len(c.tokens),
            f"{call}: a backend that supports logprobs must return one per generated token",
        )


def check_training_backend(
    backend: Any,
    job: TrainingJob,
    *,
    steps: int = 4,
    timeout: float = 120.0,
    texts: Sequence[str] | None = None,
) -> None:
    """Exercise the training contract end to end.

    Checks: capabilities and tokenizer; futures from every call; forward
    without gradients equals forward_backward before a step; a pipelined
    submission (forward_backward then optim_step without waiting) resolves in
    order; the loss falls over ``steps`` steps on a fixed batch; save_state /
    load_state restore the exact loss; save_weights_for_sampler and
    load_sampler give samplers that honour n and max_tokens.
    """
    _require(
        isinstance(backend, TrainingBackend),
        "a training backend needs capabilities, get_tokenizer, create_session and load_sampler",
    )
    caps = _check_capabilities(backend.capabilities(), training=True)
    tok = _check_tokenizer(backend.get_tokenizer(job.model_spec))
    batch = make_datums(tok, texts or [_TEXT, _TEXT[::-1]])
    loss = Loss(name="cross_entropy")
    session = backend.create_session(job)
    _require(isinstance(session, TrainingSession), "create_session must return a TrainingSession")
    try:
        start_step = session.step
        before = _check_fb(
            _resolve(session.forward(batch, loss), "forward", timeout), batch, "forward"
        )
        fb_future = session.forward_backward(batch, loss)
        step_future = session.optim_step(AdamParams(learning_rate=5e-3))
        first = _check_fb(
            _resolve(fb_future, "forward_backward", timeout), batch, "forward_backward"
        )
        _require(
            abs(first.loss - before.loss) <= 1e-4 * max(1.0, abs(before.loss)),
            f"forward ({before.loss}) and forward_backward ({first.loss}) disagree on the same "
            "weights",
        )
        stepped = _resolve(step_future, "optim_step", timeout)
        _require(
            isinstance(stepped, OptimStepResult),
            f"optim_step must resolve to OptimStepResult, got {type(stepped).__name__}",
        )
        _require(
            stepped.step == start_step + 1 and session.step == start_step + 1,
            f"after one optim_step the step must be {start_step + 1}, got "
            f"result.step={stepped.step}, session.step={session.step}",
        )
        for _ in range(max(1, steps - 1)):
            fb = session.forward_backward(batch, loss)
            st = session.optim_step(AdamParams(learning_rate=5e-3))
            _check_fb(_resolve(fb, "forward_backward", timeout), batch, "forward_backward")
            _resolve(st, "optim_step", timeout)
        after = _check_fb(
            _resolve(session.forward(batch, loss), "forward", timeout), batch, "forward"
        )
        _require(
            after.loss < first.loss,
            f"loss did not fall over {steps} steps on a fixed batch: {first.loss} -> {after.loss}",
        )
        state = _resolve(session.save_state("conformance"), "save_state", timeout)
        _require(
            isinstance(state, CheckpointRef) and state.kind == "state",
            "save_state must resolve to a CheckpointRef of kind 'state'",
        )
        fb = session.forward_backward(batch, loss)
        _resolve(fb, "forward_backward", timeout)
        _resolve(session.optim_step(AdamParams(learning_rate=5e-2)), "optim_step", timeout)
        _resolve(session.load_state(state), "load_state", timeout)
        restored = _resolve(session.forward(batch, loss), "forward", timeout)
        _require(
            abs(restored.loss - after.loss) <= 1e-5 * max(1.0, abs(after.loss)),
            f"load_state did not restore the weights: loss {after.loss} at save, "
            f"{restored.loss} after load",
        )
        sampler = _resolve(session.save_weights_for_sampler("conformance"), "save_weights", timeout)
        _require(isinstance(sampler, Sampler), "save_weights_for_sampler must resolve to a Sampler")
        ref = sampler.checkpoint
        _require(
            isinstance(ref, CheckpointRef) and ref.kind == "sampler",
            "a sampler from save_weights_for_sampler must expose its CheckpointRef (kind sampler)",
        )
        params = SamplingParams(max_tokens=6, temperature=1.0, n=2, seed=1)
        _check_completions(
            _resolve(sampler.sample(Prompt(text="The quick"), params), "sample", timeout),
            params,
            caps,
            "Sampler.sample",
        )
        reopened = backend.load_sampler(job.model_spec, ref)
        greedy = SamplingParams(max_tokens=6, temperature=0.0)
        a = _check_completions(
            _resolve(sampler.sample(Prompt(text="The quick"), greedy), "sample", timeout),
            greedy,
            caps,
            "Sampler.sample",
        )
        b = _check_completions(
            _resolve(reopened.sample(Prompt(text="The quick"), greedy), "sample", timeout),
            greedy,
            caps,
            "load_sampler(...).sample",
        )
        _require(
            a[0].tokens == b[0].tokens,
            "a sampler reopened with load_sampler must generate what the original sampler did "
            f"(greedy): {a[0].tokens} != {b[0].tokens}",
        )
    finally:
        session.close()


def check_inference_backend(
    backend: Any, *, prompt: Prompt | None = None, timeout: float = 120.0
) -> None:
    """Exercise the inference contract: complete, stream, health_check, metrics.

    Greedy completion (temperature 0) must be deterministic, respect
    max_tokens and report usage; a streaming backend's chunks must add up to
    the same text and end with a finish_reason.
    """
    _require(
        isinstance(backend, InferenceBackend),
        "an inference backend needs capabilities, complete, stream, health_check, metrics, close",
    )
    caps = _check_capabilities(backend.capabilities(), training=False)
    p = prompt or Prompt(text="Hello")
    params = SamplingParams(max_tokens=8, temperature=0.0)
    first = backend.complete(p, params)
    _require(isinstance(first, Completion), "complete must return a Completion")
    _check_completion(first, params, caps, "complete")
    _require(
        first.backend_id == caps.backend_id,
        f"Completion.backend_id ({first.backend_id!r}) must equal Capabilities.backend_id "
        f"({caps.backend_id!r})",
    )
    _require(
        first.usage.completion_tokens == len(first.tokens),
        "Completion.usage.completion_tokens must count the generated tokens",
    )
    second = backend.complete(p, params)
    _require(
        second.tokens == first.tokens, "greedy completion (temperature 0) must be deterministic"
    )
    if caps.supports_streaming:
        chunks = list(backend.stream(p, params))
        _require(bool(chunks), "stream must yield at least one chunk")
        _require(
            all(isinstance(c, StreamChunk) for c in chunks), "stream must yield StreamChunk values"
        )
        _require(
            chunks[-1].finish_reason is not None, "the last StreamChunk must carry finish_reason"
        )
        _require(
            "".join(c.text for c in chunks) == first.text,
            "streamed text must equal the completed text for the same greedy request",
        )
    health = backend.health_check()
    _require(isinstance(health, Health) and health.ok, f"health_check must be ok, got {health!r}")
    metrics = backend.metrics()
    _require(isinstance(metrics, Mapping), "metrics() must return a mapping of name -> number")
    for key, value in metrics.items():  # pyright: ignore[reportUnknownVariableType]
        _require(
            isinstance(key, str) and isinstance(value, int | float),
            f"metrics()[{key!r}] must be a number",
        )


def check_light_import(module: str, heavy: Sequence[str] = DEFAULT_HEAVY_MODULES) -> None:
    """Import ``module`` in a fresh interpreter and fail if it pulled in a heavy module.

    A plugin's ``plugin.py`` is imported whenever ``crucible`` lists plugins;
    importing torch there costs every command seconds.
    """
    code = (
        "import sys, importlib\n"
        f"importlib.import_module({module!r})\n"
        f"heavy = [m for m in {list(heavy)!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    # The child sees this process's sys.path, so modules importable here are importable there.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    _require(proc.returncode == 0, f"importing {module} failed:\n{proc.stderr}")
    loaded = proc.stdout.strip()
    _require(not loaded, f"importing {module} pulled in heavy modules: {loaded}")


@contextlib.contextmanager
def isolated_host(*plugins: Any, builtins: bool = True) -> Generator[PluginHost]:
    """A process-wide plugin host holding only core's built-ins and ``plugins``.

    Installed entry points are not loaded, so a test sees exactly the plugins
    it names; ``get_backend`` and the CLI resolve through this host until the
    block ends. Each plugin is a module or object with ``@hookimpl``
    functions, registered under its ``__name__`` (or ``plugin0``, ...)::

        with isolated_host(my_plugin) as host:
            assert "mine" in host.registrations("backend")
    """
    host = PluginHost(autoload=False, builtins=builtins)
    for i, plugin in enumerate(plugins):
        host.add_plugin(plugin, name=str(getattr(plugin, "__name__", f"plugin{i}")))
    reset_host(host)
    try:
        yield host
    finally:
        reset_host(None)

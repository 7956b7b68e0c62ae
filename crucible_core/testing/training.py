"""``check_training_backend`` and ``make_datums``: the training contract end to end.

What it asserts, in order (each failure names the call and the rule):

1. ``capabilities()`` declares training, the cross_entropy loss and adapters;
   ``get_tokenizer`` gives a Tokenizer whose ids round-trip.
2. Every session call returns a Future; ``forward`` (no gradients) equals
   ``forward_backward`` on the same weights; a pipelined submission
   (``forward_backward`` then ``optim_step`` without waiting) resolves in
   order and advances ``step`` by one.
3. The loss falls over ``steps`` steps on a fixed batch.
4. ``save_state`` / ``load_state`` restore the exact loss after further steps;
   a checkpoint on disk lies under the ``run_dir`` given to ``create_session``,
   and ``delete_checkpoint`` removes it (a second delete is harmless).
5. ``save_weights_for_sampler`` gives a Sampler exposing its CheckpointRef;
   ``sample`` with ``n = 2`` returns two completions (or refuses with
   UnsupportedError); ``load_sampler`` on that reference generates what the
   original sampler does (greedy).

Every call, and every future's resolution, is bounded by ``timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import functools
import math
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from crucible_core.contracts import Future, Sampler, Tokenizer, TrainingBackend, TrainingSession
from crucible_core.ir.backend import (
    AdamParams,
    Capabilities,
    CheckpointRef,
    Completion,
    Datum,
    ForwardBackwardResult,
    LossFnInputs,
    OptimStepResult,
    Prompt,
    SamplingParams,
)
from crucible_core.ir.training import Loss, TrainingJob
from crucible_core.testing._backend import (
    check_capabilities,
    check_completions,
    check_tokenizer,
    refused,
)
from crucible_core.testing._guard import Calls, ConformanceError, require, resolve

__all__ = ["check_training_backend", "make_datums"]

_TEXT = "The quick brown fox jumps over the lazy dog. " * 2


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


def _check_fb(result: Any, batch: Sequence[Datum], call: str) -> ForwardBackwardResult:
    require(
        isinstance(result, ForwardBackwardResult),
        f"{call} must resolve to ForwardBackwardResult, got {type(result).__name__}",
    )
    require(math.isfinite(result.loss), f"{call} returned a non-finite loss {result.loss}")
    require(
        len(result.logprobs) == len(batch),
        f"{call} must return one logprobs list per datum ({len(batch)}), "
        f"got {len(result.logprobs)}",
    )
    for i, (lp, datum) in enumerate(zip(result.logprobs, batch, strict=True)):
        require(
            len(lp) == len(datum.loss_fn_inputs.target_tokens),
            f"{call}: logprobs[{i}] has {len(lp)} entries for "
            f"{len(datum.loss_fn_inputs.target_tokens)} target tokens",
        )
        require(all(v <= 1e-4 for v in lp), f"{call}: logprobs[{i}] has values > 0 (not log-probs)")
    return result


class _Session:
    """A session driven through :class:`Calls`: every call and future bounded and named."""

    def __init__(self, calls: Calls, session: Any, batch: Sequence[Datum]) -> None:
        self.calls = calls
        self.session = session
        self.batch = batch
        self.loss = Loss(name="cross_entropy")

    def submit(self, name: str, rule: str, *args: Any) -> Any:
        return self.calls(f"{name}()", rule, getattr(self.session, name), *args)

    def wait(self, future: Any, name: str, rule: str) -> Any:
        return resolve(self.calls, future, name, rule)

    def forward(self, rule: str) -> ForwardBackwardResult:
        fut = self.submit("forward", rule, self.batch, self.loss)
        return _check_fb(self.wait(fut, "forward", rule), self.batch, "forward")

    def train_step(self, lr: float, rule: str) -> ForwardBackwardResult:
        fb = self.submit("forward_backward", rule, self.batch, self.loss)
        st = self.submit("optim_step", rule, AdamParams(learning_rate=lr))
        out = _check_fb(self.wait(fb, "forward_backward", rule), self.batch, "forward_backward")
        self.wait(st, "optim_step", rule)
        return out


def check_training_backend(
    backend: Any,
    job: TrainingJob,
    *,
    steps: int = 4,
    timeout: float = 120.0,
    texts: Sequence[str] | None = None,
) -> None:
    """Exercise the training contract (see the module docstring for every rule).

    ``job`` names the model and adapter to train; ``texts`` the fixed batch
    (default: two short sentences); ``timeout`` bounds every call in seconds.
    """
    require(
        isinstance(backend, TrainingBackend),
        "a training backend needs capabilities, get_tokenizer, create_session and load_sampler",
    )
    with Calls(timeout) as calls, contextlib.ExitStack() as stack:
        caps = check_capabilities(
            calls("capabilities()", "capabilities() describes the backend", backend.capabilities),
            training=True,
        )
        tok = check_tokenizer(
            calls(
                "get_tokenizer()",
                "the model's tokenizer is available without a session",
                backend.get_tokenizer,
                job.model_spec,
            )
        )
        batch = make_datums(tok, texts or [_TEXT, _TEXT[::-1]])
        run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crucible-kit-")))
        session = calls(
            "create_session()",
            "a job's session is created",
            functools.partial(backend.create_session, job, run_dir=run_dir),
        )
        require(
            isinstance(session, TrainingSession), "create_session must return a TrainingSession"
        )
        try:
            _train(calls, backend, job, _Session(calls, session, batch), caps, steps, run_dir)
        except BaseException:
            # Report the first failure, not close()'s; a stuck worker cannot run close().
            if not calls.stuck:
                with contextlib.suppress(ConformanceError):
                    calls.attempt("close()", "a session closes", session.close)
            raise
        calls("close()", "a session closes", session.close)


def _train(
    calls: Calls,
    backend: Any,
    job: TrainingJob,
    s: _Session,
    caps: Capabilities,
    steps: int,
    run_dir: Path,
) -> None:
    start_step = s.session.step
    before = s.forward("forward computes the loss without gradients")
    rule = "forward_backward then optim_step, submitted without waiting, resolve in order"
    fb_future = s.submit("forward_backward", rule, s.batch, s.loss)
    step_future = s.submit("optim_step", rule, AdamParams(learning_rate=5e-3))
    first = _check_fb(s.wait(fb_future, "forward_backward", rule), s.batch, "forward_backward")
    require(
        abs(first.loss - before.loss) <= 1e-4 * max(1.0, abs(before.loss)),
        f"forward ({before.loss}) and forward_backward ({first.loss}) disagree on the same weights",
    )
    stepped = s.wait(step_future, "optim_step", rule)
    require(
        isinstance(stepped, OptimStepResult),
        f"optim_step must resolve to OptimStepResult, got {type(stepped).__name__}",
    )
    require(
        stepped.step == start_step + 1 and s.session.step == start_step + 1,
        f"after one optim_step the step must be {start_step + 1}, got "
        f"result.step={stepped.step}, session.step={s.session.step}",
    )
    for _ in range(max(1, steps - 1)):
        s.train_step(5e-3, "training steps on a fixed batch succeed")
    after = s.forward("forward after training succeeds")
    require(
        after.loss < first.loss,
        f"loss did not fall over {steps} steps on a fixed batch: {first.loss} -> {after.loss}",
    )
    rule = "save_state / load_state restore the weights exactly"
    state = s.wait(s.submit("save_state", rule, "conformance"), "save_state", rule)
    require(
        isinstance(state, CheckpointRef) and state.kind == "state",
        "save_state must resolve to a CheckpointRef of kind 'state'",
    )
    s.train_step(5e-2, rule)
    s.wait(s.submit("load_state", rule, state), "load_state", rule)
    restored = s.forward(rule)
    require(
        abs(restored.loss - after.loss) <= 1e-5 * max(1.0, abs(after.loss)),
        f"load_state did not restore the weights: loss {after.loss} at save, "
        f"{restored.loss} after load",
    )
    _check_delete(calls, s.session, state, run_dir)
    _check_samplers(calls, backend, job, s, caps)


def _check_delete(calls: Calls, session: Any, ref: CheckpointRef, run_dir: Path) -> None:
    """Files go under the run directory; delete_checkpoint removes them, twice is harmless."""
    from crucible_core.records.artifacts import uri_path

    local = uri_path(ref.uri)
    require(
        local is None or local.resolve().is_relative_to(run_dir.resolve()),
        f"a checkpoint on disk must be written under the run_dir given to create_session "
        f"({run_dir}), got {local}",
    )
    rule = "delete_checkpoint removes a checkpoint the session saved"
    calls("delete_checkpoint()", rule, session.delete_checkpoint, ref)
    require(local is None or not local.exists(), f"delete_checkpoint left {local} on disk")
    rule = "deleting a checkpoint that is already gone is not an error"
    calls("delete_checkpoint() again", rule, session.delete_checkpoint, ref)


def _sample(
    calls: Calls, sampler: Any, params: SamplingParams, caps: Capabilities, call: str
) -> list[Completion]:
    rule = f"a sampler returns n={params.n} completions"
    future = calls(call, rule, sampler.sample, Prompt(text="The quick"), params)
    return check_completions(resolve(calls, future, call, rule), params, caps, call)


def _check_samplers(
    calls: Calls, backend: Any, job: TrainingJob, s: _Session, caps: Capabilities
) -> None:
    rule = "save_weights_for_sampler gives a Sampler over the trained weights"
    sampler = s.wait(
        s.submit("save_weights_for_sampler", rule, "conformance"), "save_weights_for_sampler", rule
    )
    require(isinstance(sampler, Sampler), "save_weights_for_sampler must resolve to a Sampler")
    ref = sampler.checkpoint
    require(
        isinstance(ref, CheckpointRef) and ref.kind == "sampler",
        "a sampler from save_weights_for_sampler must expose its CheckpointRef (kind sampler)",
    )
    params = SamplingParams(max_tokens=6, temperature=1.0, n=2, seed=1)
    call = "Sampler.sample(n=2)"
    rule = "a sampler returns n completions, or refuses n it cannot give"
    future, exc = calls.attempt(call, rule, sampler.sample, Prompt(text="The quick"), params)
    if exc is None and isinstance(future, Future):
        # A refusal may also come through the future.
        value, exc = calls.attempt(  # pyright: ignore[reportUnknownVariableType]
            f"{call} (its future's result)", rule, future.result, calls.timeout
        )
        if not refused(exc, call, "n=2"):
            check_completions(value, params, caps, call)
    elif not refused(exc, call, "n=2"):
        resolve(calls, future, call, rule)  # names the missing Future
    greedy = SamplingParams(max_tokens=6, temperature=0.0)
    a = _sample(calls, sampler, greedy, caps, "Sampler.sample")
    reopened = calls(
        "load_sampler()",
        "load_sampler reopens saved sampler weights",
        backend.load_sampler,
        job.model_spec,
        ref,
    )
    b = _sample(calls, reopened, greedy, caps, "load_sampler(...).sample")
    require(
        a[0].tokens == b[0].tokens,
        "a sampler reopened with load_sampler must generate what the original sampler did "
        f"(greedy): {a[0].tokens} != {b[0].tokens}",
    )

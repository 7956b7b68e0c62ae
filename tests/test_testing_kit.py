"""The conformance kit passes a conforming backend and names the rule a broken one breaks."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from crucible_core.errors import UnsupportedError
from crucible_core.ir import (
    AdamParams,
    Completion,
    DatasetSpec,
    Datum,
    ForwardBackwardResult,
    Health,
    Loss,
    ModelSpec,
    OptimStepResult,
    Prompt,
    SamplingParams,
    StreamChunk,
    TrainingJob,
)
from crucible_core.testing import (
    ConformanceError,
    check_inference_backend,
    check_light_import,
    check_training_backend,
)
from tests.toy_backend import (
    ForgetfulSession,
    NoLearningSession,
    SyncSession,
    ToyBackend,
    ToySampler,
    ToySession,
    backend_with,
    done,
)

JOB = TrainingJob(model_spec=ModelSpec(name="toy"), dataset_spec=DatasetSpec(uri="x"))


def test_conforming_training_backend_passes() -> None:
    check_training_backend(ToyBackend(), JOB)


@pytest.mark.parametrize(
    ("session", "message"),
    [
        (NoLearningSession, "loss did not fall"),
        (ForgetfulSession, "load_state did not restore"),
        (SyncSession, "forward must return a Future"),
    ],
)
def test_broken_training_backends_fail_with_the_rule(session: Any, message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_training_backend(backend_with(session), JOB)


def test_not_a_backend_at_all() -> None:
    with pytest.raises(ConformanceError, match="needs capabilities, get_tokenizer"):
        check_training_backend(object(), JOB)
    with pytest.raises(ConformanceError, match="an inference backend needs"):
        check_inference_backend(object())


def test_conforming_inference_backend_passes() -> None:
    check_inference_backend(ToyBackend())


class _Wrong(ToyBackend):
    """The toy backend with one rule broken, chosen by ``mode``."""

    mode = ""
    release = threading.Event()  # lets a deliberately slow call end when the test is done

    def complete(self, prompt: Any, params: Any) -> Completion:
        mode = self.mode
        if mode == "slow":
            self.release.wait(5.0)
        if mode == "raises":
            raise RuntimeError("boom")
        if mode == "n_ignored" and params.n > 1:
            params = params.__replace__(n=1)  # type: ignore[attr-defined]
        if mode == "stop_ignored" or (mode == "stop_wrong_error" and params.stop):
            if mode == "stop_wrong_error":
                raise ValueError("stop strings are not supported")
            params = params.__replace__(stop=[])  # type: ignore[attr-defined]
        if mode == "stop_refused" and params.stop:
            raise UnsupportedError("toy: stop strings are not supported")
        c = super().complete(prompt, params)
        if mode == "too_long":
            return c.__replace__(tokens=[*c.tokens, 1])  # type: ignore[attr-defined]
        if mode == "backend_id":
            return c.__replace__(backend_id="other")  # type: ignore[attr-defined]
        if mode == "no_length":
            return c.__replace__(finish_reason="stop")  # type: ignore[attr-defined]
        if mode == "false_length" and params.stop:
            return c.__replace__(finish_reason="length")  # type: ignore[attr-defined]
        return c

    def stream(self, prompt: Any, params: Any) -> Iterator[StreamChunk]:
        if self.mode == "stream_n_ignored" and params.n > 1:
            params = params.__replace__(n=1)  # type: ignore[attr-defined]
        chunks = list(super().stream(prompt, params))
        if self.mode == "no_finish":
            chunks[-1] = chunks[-1].__replace__(finish_reason=None)  # type: ignore[attr-defined]
        if self.mode == "early_finish":
            chunks[0] = chunks[0].__replace__(finish_reason="length")  # type: ignore[attr-defined]
        if self.mode == "stream_text":
            chunks = chunks[1:]
        if self.mode == "stream_tokens":
            chunks[0] = chunks[0].__replace__(tokens=[])  # type: ignore[attr-defined]
        yield from chunks

    def health_check(self) -> Health:
        return Health(ok=self.mode != "unhealthy")


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("too_long", "max_tokens was 8"),
        ("backend_id", "must equal Capabilities.backend_id"),
        ("no_finish", "last StreamChunk must carry finish_reason"),
        ("unhealthy", "health_check must be ok"),
        ("no_length", "max_tokens cut the greedy completion .* must be 'length'"),
        ("false_length", "'length' means max_tokens \\(8\\) cut the text"),
        ("stop_ignored", "must end before the stop string 'oo'"),
        ("stop_wrong_error", "raised ValueError.*refused with crucible_core.errors.Unsupported"),
        ("n_ignored", "complete\\(.*n=2\\) returned Completion instead of refusing"),
        ("early_finish", "only the last StreamChunk may carry finish_reason"),
        ("stream_text", "streamed text must equal the completed text"),
        ("stream_tokens", "tokens must concatenate to the completion's tokens"),
        ("stream_n_ignored", "must stream completions with index 0 and 1"),
    ],
)
def test_broken_inference_backends_fail_with_the_rule(mode: str, message: str) -> None:
    backend = _Wrong()
    backend.mode = mode
    with pytest.raises(ConformanceError, match=message):
        check_inference_backend(backend)


def test_a_refused_stop_sequence_is_allowed() -> None:
    backend = _Wrong()
    backend.mode = "stop_refused"
    check_inference_backend(backend)


def test_timeout_bounds_every_call() -> None:
    """A backend taking 5 s per call used to pass with timeout=1.0; now it fails in ~1 s."""
    backend = _Wrong()
    backend.mode = "slow"
    start = time.monotonic()
    try:
        with pytest.raises(ConformanceError, match=r"complete\(.*\) did not return within 1.0 s"):
            check_inference_backend(backend, timeout=1.0)
    finally:
        _Wrong.release.set()
    assert time.monotonic() - start < 4.0


def test_a_backend_exception_names_the_call_and_the_rule() -> None:
    backend = _Wrong()
    backend.mode = "raises"
    with pytest.raises(ConformanceError, match="raised RuntimeError: boom") as info:
        check_inference_backend(backend)
    assert "complete(max_tokens=8, temperature=0.0)" in str(info.value)
    assert "checking: a greedy completion succeeds" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_the_prompt_must_give_enough_text() -> None:
    with pytest.raises(ConformanceError, match="needs at least 2 tokens of visible text"):
        check_inference_backend(ToyBackend(), prompt=Prompt(text=" "))


class _HangingSession(ToySession):
    def forward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        return Future()  # never resolves


class _BlockingSession(ToySession):
    release = threading.Event()
    closed = False

    def forward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        self.release.wait(5.0)  # blocks in the call itself, not in its future
        return super().forward(batch, loss)

    def close(self) -> None:
        type(self).closed = True


class _FailingStepSession(ToySession):
    closed = False

    def close(self) -> None:
        type(self).closed = True

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        raise MemoryError("out of accelerator memory")


class _OneSampleSampler(ToySampler):
    def sample(self, prompt: Prompt, params: SamplingParams) -> Future[list[Completion]]:
        return super().sample(prompt, params.__replace__(n=1))  # type: ignore[attr-defined]


class _RefusingSampler(ToySampler):
    def sample(self, prompt: Prompt, params: SamplingParams) -> Future[list[Completion]]:
        if params.n > 1:
            raise UnsupportedError("toy: one completion per request")
        return super().sample(prompt, params)


def _with_sampler(sampler_class: type[ToySampler]) -> ToyBackend:
    class Session(ToySession):
        def save_weights_for_sampler(self, name: str) -> Future[ToySampler]:
            inner = super().save_weights_for_sampler(name).result()
            return done(sampler_class(inner.w, inner.checkpoint))

    return backend_with(Session)


def test_a_future_that_never_resolves_fails_within_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(ConformanceError, match=r"forward's future did not resolve within 0\.5 s"):
        check_training_backend(backend_with(_HangingSession), JOB, timeout=0.5)
    assert time.monotonic() - start < 4.0


def test_a_blocking_call_is_reported_not_the_close_after_it() -> None:
    start = time.monotonic()
    try:
        with pytest.raises(ConformanceError, match=r"forward\(\) did not return within 0\.5 s"):
            check_training_backend(backend_with(_BlockingSession), JOB, timeout=0.5)
    finally:
        _BlockingSession.release.set()
    assert time.monotonic() - start < 3.0
    assert not _BlockingSession.closed  # the kit's thread was still inside forward()


def test_a_training_exception_names_the_call() -> None:
    with pytest.raises(ConformanceError, match=r"optim_step\(\) raised MemoryError") as info:
        check_training_backend(backend_with(_FailingStepSession), JOB)
    assert "checking: forward_backward then optim_step" in str(info.value)
    assert _FailingStepSession.closed  # the session is still closed after a failure


def test_a_sampler_must_honour_or_refuse_n() -> None:
    with pytest.raises(ConformanceError, match=r"Sampler.sample\(n=2\) must return n=2"):
        check_training_backend(_with_sampler(_OneSampleSampler), JOB)
    check_training_backend(_with_sampler(_RefusingSampler), JOB)


def test_light_import_detects_heavy_modules(tmp_path: Path) -> None:
    (tmp_path / "heavy_probe_mod.py").write_text("import json\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ConformanceError, match="pulled in heavy modules: json"):
            check_light_import("heavy_probe_mod", heavy=("json",))
        check_light_import("heavy_probe_mod", heavy=("sqlite3",))
        with pytest.raises(ConformanceError, match="importing no_such_mod_q failed"):
            check_light_import("no_such_mod_q")
    finally:
        sys.path.remove(str(tmp_path))


def test_isolated_host_sees_only_the_named_plugins() -> None:
    import crucible_core
    from crucible_core.testing import isolated_host
    from tests.toy_backend import toy_plugin

    with isolated_host(toy_plugin()) as host:
        assert set(host.registrations("backend")) == {"toy", "toyfile"}  # what toy_plugin registers
        assert crucible_core.get_backend("toy").capabilities().backend_id == "toy"
        assert [p.name for p in host.plugins()] == ["core", "plugin0"]
    from crucible_core.plugins import get_host

    assert get_host() is not host

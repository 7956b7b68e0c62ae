"""The conformance kit of crucible_core, and the contract's Protocols, on the real backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from crucible_local.backend import LocalBackend
from crucible_local.models import write_tiny_model_dir

from crucible_core.contracts import (
    Future,
    InferenceBackend,
    Sampler,
    Tokenizer,
    TrainingBackend,
    TrainingSession,
)
from crucible_core.ir.backend import Prompt, SamplingParams
from crucible_core.ir.training import Full, LoRA, ModelSpec
from crucible_core.testing import check_inference_backend, check_training_backend


@pytest.mark.parametrize(
    ("model", "adapter"),
    [
        ("tiny-llama", LoRA()),
        ("tiny-llama", Full()),
        ("tiny-gpt2", LoRA(target_modules=["c_attn", "c_fc"])),
    ],
)
def test_training_conformance(
    backend: LocalBackend, make_job: Callable[..., Any], model: str, adapter: Any
) -> None:
    check_training_backend(
        backend, make_job(model_spec=ModelSpec(name=model), adapter_config=adapter)
    )


def test_training_conformance_on_a_model_directory(
    backend: LocalBackend, make_job: Callable[..., Any], tmp_path: Path
) -> None:
    directory = write_tiny_model_dir(tmp_path / "model")
    check_training_backend(
        backend, make_job(model_spec=ModelSpec(name="my-model", path=str(directory)))
    )


def test_inference_conformance(backend: LocalBackend) -> None:
    check_inference_backend(backend)
    metrics = backend.metrics()
    assert metrics["requests"] >= 3
    assert metrics["completion_tokens"] > 0
    health = backend.health_check()
    assert health.ok
    assert "tiny-llama" in health.detail


def test_inference_from_a_checkpoint(
    backend: LocalBackend, make_job: Callable[..., Any], tmp_path: Path
) -> None:
    session = backend.create_session(make_job())
    ref = session.save_weights_for_sampler("s").result().checkpoint
    assert ref is not None
    served = LocalBackend(home=tmp_path, checkpoint=ref.uri)
    check_inference_backend(served, prompt=Prompt(text="The"))
    served.close()


def test_objects_satisfy_the_protocols(backend: LocalBackend, make_job: Callable[..., Any]) -> None:
    assert isinstance(backend, TrainingBackend)
    assert isinstance(backend, InferenceBackend)
    job = make_job()
    assert isinstance(backend.get_tokenizer(job.model_spec), Tokenizer)
    session = backend.create_session(job)
    assert isinstance(session, TrainingSession)
    future = session.save_weights_for_sampler("p")
    assert isinstance(future, Future)
    sampler = future.result()
    assert isinstance(sampler, Sampler)
    assert isinstance(sampler.sample(Prompt(text="a"), SamplingParams(max_tokens=1)), Future)


def test_num_threads(tmp_path: Path, make_job: Callable[..., Any]) -> None:
    before = torch.get_num_threads()
    try:
        explicit = LocalBackend(home=tmp_path, num_threads=2)
        assert torch.get_num_threads() == 2
        explicit.create_session(make_job())
        assert torch.get_num_threads() == 2
        # Unset: a built-in model runs on one thread.
        LocalBackend(home=tmp_path).create_session(make_job())
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_home_defaults_to_crucible_home_read_at_each_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_job: Callable[..., Any]
) -> None:
    backend = LocalBackend()
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "one"))
    assert backend.home == tmp_path / "one"
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "two"))
    session = backend.create_session(make_job(job_id="run-1"))
    assert session.run_dir == tmp_path / "two" / "runs" / "run-1"
    monkeypatch.delenv("CRUCIBLE_HOME")
    assert backend.home == Path(".crucible")


def test_close_closes_sessions_and_samplers(
    backend: LocalBackend, make_job: Callable[..., Any]
) -> None:
    session = backend.create_session(make_job())
    assert backend.metrics()["sessions_open"] == 1
    backend.close()
    assert session.closed
    assert backend.metrics()["sessions_open"] == 0

"""crucible-tinker's backend against the conformance kit, through the server, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from crucible_tinker.backend import TinkerBackend
from crucible_tinker.server import TinkerServer

from crucible_core.errors import ConfigError, UnsupportedError
from crucible_core.ir.backend import Prompt, SamplingParams
from crucible_core.ir.training import (
    SGD,
    DatasetSpec,
    Full,
    LearningConfig,
    LoRA,
    Loss,
    ModelSpec,
    QLoRA,
    TrainingJob,
)
from crucible_core.testing import check_inference_backend, check_training_backend

from .conftest import BASE_MODEL, WAIT

pytestmark = pytest.mark.timeout(240)


def job(**overrides: object) -> TrainingJob:
    fields: dict[str, object] = {
        "backend": "tinker",
        "model_spec": ModelSpec(name=BASE_MODEL),
        "adapter_config": LoRA(rank=8, train_unembed=False),
        "learning_config": LearningConfig(seed=0, max_steps=10),
        "dataset_spec": DatasetSpec(uri="memory:conformance"),
    }
    fields.update(overrides)
    return TrainingJob(**fields)  # type: ignore[arg-type]


@pytest.fixture
def backend(server: TinkerServer, local_home: Path) -> Iterator[TinkerBackend]:
    b = TinkerBackend(
        base_url=server.url,
        api_key=server.api_key,
        tokenizer_backend="local",
        tokenizer_backend_options={"home": str(local_home)},
        model=BASE_MODEL,
        timeout=WAIT,
    )
    yield b
    b.close()


def test_training_contract(backend: TinkerBackend) -> None:
    check_training_backend(backend, job(), steps=4, timeout=WAIT)


def test_inference_contract(backend: TinkerBackend) -> None:
    check_inference_backend(backend, prompt=Prompt(text="The quick"), timeout=WAIT)
    assert backend.metrics()["requests"] >= 2


def test_unsupported_settings_are_refused_before_any_request(backend: TinkerBackend) -> None:
    with pytest.raises(UnsupportedError, match="QLoRA"):
        backend.create_session(job(adapter_config=QLoRA(rank=4)))
    with pytest.raises(UnsupportedError, match="full fine-tuning"):
        backend.create_session(job(adapter_config=Full()))
    with pytest.raises(UnsupportedError, match="AdamW"):
        backend.create_session(job(learning_config=LearningConfig(optimizer=SGD())))
    with pytest.raises(UnsupportedError, match="dpo"):
        backend.create_session(job(learning_config=LearningConfig(loss=Loss(name="dpo"))))


def test_tokenizer_needs_a_local_source(server: TinkerServer) -> None:
    b = TinkerBackend(base_url=server.url, api_key=server.api_key)
    try:
        with pytest.raises(ConfigError, match="tokenizer"):
            b.get_tokenizer(ModelSpec(name=BASE_MODEL))
        with pytest.raises(ConfigError, match="option `model`"):
            b.complete(Prompt(text="hi"), SamplingParams(max_tokens=2))
    finally:
        b.close()


def test_health_check_reports_a_dead_server() -> None:
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = TinkerBackend(base_url=f"http://127.0.0.1:{port}", api_key="tml-x", timeout=5)
    try:
        health = b.health_check()
        assert not health.ok
        assert "Connect" in health.detail
    finally:
        b.close()

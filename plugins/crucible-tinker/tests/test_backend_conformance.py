"""crucible-tinker's backend against the conformance kit, through the server, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _dead_url() -> str:
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_tokenizer_sources(
    server: TinkerServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ModelSpec(name=BASE_MODEL)
    # A crucible-tinker server names its backend; this process has "local" too: borrowed.
    auto = TinkerBackend(base_url=server.url, api_key=server.api_key, timeout=WAIT)
    try:
        assert auto.get_tokenizer(spec).name == "crucible-byte"
    finally:
        auto.close()
    # Any other server (or none): no hub download, a ConfigError that says what to set.
    nowhere = TinkerBackend(base_url=_dead_url(), api_key="tml-x", timeout=5)
    try:
        with pytest.raises(ConfigError, match="tokenizer") as info:
            nowhere.get_tokenizer(spec)
        assert "tokenizer_dir" in (info.value.hint or "")
        with pytest.raises(ConfigError, match="option `model`"):
            nowhere.complete(Prompt(text="hi"), SamplingParams(max_tokens=2))
    finally:
        nowhere.close()
    # The environment names a backend to borrow from.
    monkeypatch.setenv("CRUCIBLE_TINKER_TOKENIZER_BACKEND", "local")
    from_env = TinkerBackend(base_url=_dead_url(), api_key="tml-x", timeout=5)
    try:
        assert from_env.get_tokenizer(spec).name == "crucible-byte"
    finally:
        from_env.close()
    monkeypatch.delenv("CRUCIBLE_TINKER_TOKENIZER_BACKEND")
    # A local Hugging Face tokenizer directory (built here, nothing downloaded).
    directory = _hf_tokenizer_dir(tmp_path / "tok")
    local_dir = TinkerBackend(base_url=_dead_url(), api_key="tml-x", tokenizer_dir=str(directory))
    try:
        tok = local_dir.get_tokenizer(spec)
        ids = tok.encode("hello world")
        assert tok.decode(ids) == "hello world"
        assert tok.eos_token_id == tok.encode("</s>", add_special_tokens=False)[0]
        assert tok.name == str(directory)
    finally:
        local_dir.close()


def _hf_tokenizer_dir(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"</s>": 0, "<unk>": 1, "hello": 2, "world": 3}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(path))
    return path


def test_health_check_reports_a_dead_server() -> None:
    b = TinkerBackend(base_url=_dead_url(), api_key="tml-x", timeout=5)
    try:
        health = b.health_check()
        assert not health.ok
        assert "Connect" in health.detail
    finally:
        b.close()


def test_sampled_text_drops_the_stop_token_as_on_the_local_path(
    backend: TinkerBackend, tokenizer: Any
) -> None:
    """Tinker returns the token that ended generation among the sampled tokens; the text
    must not show it (it used to end in ``<|eos|>``), nor a stop string."""
    sampler = backend.load_sampler(ModelSpec(name=BASE_MODEL), None)
    eos = sampler.tokenizer.eos_token_id
    assert eos is not None
    eos_text = tokenizer.decode([eos])
    assert eos_text  # what would leak: "<|eos|>"
    # Hot sampling on an untrained model: some of the 64 draws end with EOS (seeded).
    params = SamplingParams(n=64, max_tokens=48, temperature=3.0, seed=1)
    out = sampler.sample(Prompt(text="Hello"), params).result(timeout=WAIT)
    ended = [c for c in out if c.tokens[-1] == eos]
    assert ended, "no completion ended with EOS: pick another seed"
    for c in ended:
        assert c.finish_reason == "stop"
        assert c.text == tokenizer.decode(c.tokens[:-1])
    assert all(eos_text not in c.text for c in out)
    # A stop string: the text stops before it (the tokens keep the one that completed it).
    stopped = sampler.sample(
        Prompt(text="Hello"),
        SamplingParams(n=64, max_tokens=48, temperature=3.0, seed=2, stop=["e"]),
    ).result(timeout=WAIT)
    cut = [c for c in stopped if "e" in tokenizer.decode(c.tokens)]
    assert cut, "no completion met the stop string: pick another seed"
    assert all("e" not in c.text for c in stopped)

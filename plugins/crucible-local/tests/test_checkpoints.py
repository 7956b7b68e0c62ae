"""Checkpoints: exact resume, PEFT-format adapters, full models, formats, URIs."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from crucible_local.backend import LocalBackend
from crucible_local.checkpoints import path_from_uri, to_uri
from crucible_local.models import load_model

from crucible_core.errors import ConfigError, NotFound, UnsupportedError
from crucible_core.ir.backend import AdamParams, CheckpointRef, Datum, Prompt, SamplingParams
from crucible_core.ir.training import CheckpointPolicy, Full, LoRA, Loss, ModelSpec, Scheduler

PROMPT_TOKENS = [116, 104, 101, 32, 99, 97, 116]  # "the cat"

# peft (0.18+) reads transformers 5's deprecated ``is_gradient_checkpointing`` whenever a
# PeftModel is built; these tests call peft directly, as a user would.
PEFT_DEPRECATION = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)


def _steps(session: Any, batches: list[list[Datum]], lr: float = 1e-2) -> list[float]:
    out = []
    for batch in batches:
        out.append(session.forward_backward(batch, Loss()).result().loss)
        session.optim_step(AdamParams(learning_rate=lr)).result()
    return out


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_resume_gives_the_losses_of_an_uninterrupted_run(
    tmp_path: Path,
    make_job: Callable[..., Any],
    datums: Callable[..., list[Datum]],
    adapter: str,
) -> None:
    config = (
        LoRA(rank=4, alpha=8, dropout=0.2, target_modules=["q_proj", "v_proj", "down_proj"])
        if adapter == "lora"
        else Full()
    )
    job = make_job(
        adapter_config=config,
        scheduler=Scheduler(name="cosine", warmup_steps=2),
        max_steps=8,
        job_id="resume-test",
    )
    texts = ["the cat sat on the mat", "dogs run in the park", "a b c d e f g", "hello world"]
    # The session applies the cosine schedule: resuming must restore where it was.
    uninterrupted = LocalBackend(home=tmp_path / "a", num_threads=1, lr_schedule="session")
    first = uninterrupted.create_session(job)
    tok = first.tokenizer
    batches = [datums(tok, texts[i % 4 :] + texts[: i % 4]) for i in range(8)]
    head = _steps(first, batches[:4])
    ref = first.save_state("step-4").result()
    python_draw, numpy_draw = random.random(), np.random.rand()
    tail = _steps(first, batches[4:])
    first.close()

    random.seed(999)  # resume in a process whose global generators moved on
    np.random.seed(999)
    resumed_backend = LocalBackend(home=tmp_path / "b", num_threads=1, lr_schedule="session")
    second = resumed_backend.create_session(job)
    second.load_state(ref).result()
    assert second.step == 4
    assert (random.random(), np.random.rand()) == (python_draw, numpy_draw)
    resumed = _steps(second, batches[4:])
    assert resumed == tail  # bitwise: weights, Adam moments, schedule and dropout stream
    assert len(head) == 4
    uninterrupted.close()
    resumed_backend.close()


def test_state_checkpoint_layout_and_uri(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    session = backend.create_session(make_job(job_id="layout"))
    _steps(session, [datums(session.tokenizer)])
    ref = session.save_state("7").result()
    assert ref.kind == "state"
    assert ref.step == 1
    assert ref.backend_id == "local"
    assert ref.uri.startswith("file:///")
    directory = path_from_uri(ref.uri)
    assert directory == backend.home.resolve() / "runs" / "layout" / "checkpoints" / "7" / "state"
    assert {p.name for p in directory.iterdir()} >= {
        "trainable.safetensors",
        "optimizer.pt",
        "rng_state.pt",
        "crucible_checkpoint.json",
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    meta = json.loads((directory / "crucible_checkpoint.json").read_text())
    assert meta["step"] == 1
    assert meta["kind"] == "state"
    # Saving again under the same name replaces it; no temporary directories remain.
    session.save_state("7").result()
    assert [p.name for p in directory.parent.iterdir()] == ["state"]
    # load_state accepts a plain path and the parent directory too.
    session.load_state(CheckpointRef(uri=str(directory.parent))).result()
    assert to_uri(directory) == ref.uri


def test_absolute_names_write_where_they_point(
    backend: LocalBackend,
    make_job: Callable[..., Any],
    datums: Callable[..., list[Datum]],
    tmp_path: Path,
) -> None:
    session = backend.create_session(make_job())
    target = tmp_path / "elsewhere" / "ckpt"
    ref = session.save_state(str(target)).result()
    assert path_from_uri(ref.uri) == target / "state"
    sampler = session.save_weights_for_sampler(target.as_uri()).result()
    assert sampler.checkpoint is not None
    assert path_from_uri(sampler.checkpoint.uri) == target / "sampler"
    with pytest.raises(ConfigError, match="climbs out of the run directory"):
        session.save_state("../escape")


@PEFT_DEPRECATION
def test_peft_loads_the_adapter_with_the_samplers_logits(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    from peft import PeftModel

    job = make_job(adapter_config=LoRA(rank=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    session = backend.create_session(job)
    _steps(session, [datums(session.tokenizer)] * 5)
    sampler = session.save_weights_for_sampler("s").result()
    assert sampler.checkpoint is not None
    assert sampler.checkpoint.kind == "sampler"
    directory = path_from_uri(sampler.checkpoint.uri)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in directory.iterdir()
    }
    adapter_config = json.loads((directory / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4
    assert adapter_config["lora_alpha"] == 8
    assert sorted(adapter_config["target_modules"]) == sorted(
        f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")
    )
    base = load_model(job.model_spec).model
    peft_model = PeftModel.from_pretrained(base, str(directory)).eval()
    with torch.no_grad():
        expected = peft_model(input_ids=torch.tensor([PROMPT_TOKENS])).logits[0]
    assert torch.allclose(sampler.logits(PROMPT_TOKENS), expected, atol=1e-6)
    # The weights differ from the base model's: the adapter trained.
    base_logits = (
        load_model(job.model_spec).model.eval()(input_ids=torch.tensor([PROMPT_TOKENS])).logits[0]
    )
    assert not torch.allclose(expected, base_logits, atol=1e-3)


def test_sampler_is_a_snapshot(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    session = backend.create_session(make_job())
    batch = datums(session.tokenizer)
    _steps(session, [batch])
    sampler = session.save_weights_for_sampler("early").result()
    before = sampler.logits(PROMPT_TOKENS).clone()
    _steps(session, [batch] * 3)
    assert torch.equal(sampler.logits(PROMPT_TOKENS), before)
    reopened = backend.load_sampler(job_spec(session), sampler.checkpoint)
    assert torch.allclose(reopened.logits(PROMPT_TOKENS), before, atol=1e-6)


def job_spec(session: Any) -> ModelSpec:
    return session.job.model_spec


@PEFT_DEPRECATION
def test_pytorch_format(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    from peft import PeftModel

    job = make_job(checkpoint_policy=CheckpointPolicy(format="pytorch"))
    session = backend.create_session(job)
    _steps(session, [datums(session.tokenizer)] * 2)
    state = session.save_state("p").result()
    sampler = session.save_weights_for_sampler("p").result()
    assert state.metadata["format"] == "pytorch"
    state_dir = path_from_uri(state.uri)
    sampler_dir = path_from_uri(sampler.checkpoint.uri)  # type: ignore[union-attr]
    assert (state_dir / "trainable.bin").is_file()
    assert not (state_dir / "trainable.safetensors").exists()
    assert (sampler_dir / "adapter_model.bin").is_file()
    assert not (sampler_dir / "adapter_model.safetensors").exists()
    peft_model = PeftModel.from_pretrained(load_model(job.model_spec).model, str(sampler_dir))
    with torch.no_grad():
        logits = peft_model.eval()(input_ids=torch.tensor([PROMPT_TOKENS])).logits[0]
    assert torch.allclose(sampler.logits(PROMPT_TOKENS), logits, atol=1e-6)
    session.load_state(state).result()


@pytest.mark.parametrize("fmt", ["safetensors", "pytorch"])
def test_full_fine_tune_sampler_dir_is_a_model_directory(
    backend: LocalBackend,
    make_job: Callable[..., Any],
    datums: Callable[..., list[Datum]],
    fmt: str,
) -> None:
    from transformers import AutoModelForCausalLM

    job = make_job(adapter_config=Full(), checkpoint_policy=CheckpointPolicy(format=fmt))
    session = backend.create_session(job)
    _steps(session, [datums(session.tokenizer)] * 2, lr=1e-3)
    sampler = session.save_weights_for_sampler("full").result()
    directory = path_from_uri(sampler.checkpoint.uri)  # type: ignore[union-attr]
    weights = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
    assert (directory / weights).is_file()
    model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([PROMPT_TOKENS])).logits[0]
    assert torch.allclose(sampler.logits(PROMPT_TOKENS), logits, atol=1e-6)
    # As a ModelSpec.path, and through load_sampler from the sampler or the state checkpoint.
    as_model = backend.load_sampler(ModelSpec(name="tuned", path=str(directory)), None)
    assert torch.allclose(as_model.logits(PROMPT_TOKENS), logits, atol=1e-6)
    state = session.save_state("full").result()
    from_state = backend.load_sampler(job.model_spec, state)
    assert torch.allclose(from_state.logits(PROMPT_TOKENS), logits, atol=1e-6)


def test_load_sampler_from_a_lora_state_checkpoint(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    job = make_job()
    session = backend.create_session(job)
    _steps(session, [datums(session.tokenizer)] * 3)
    state = session.save_state("s").result()
    sampler = session.save_weights_for_sampler("s").result()
    from_state = backend.load_sampler(job.model_spec, state)
    greedy = SamplingParams(max_tokens=8, temperature=0.0)
    a = sampler.sample(Prompt(text="the"), greedy).result()[0]
    b = from_state.sample(Prompt(text="the"), greedy).result()[0]
    assert a.tokens == b.tokens
    # The run's checkpoint directory (parent of sampler/ and state/) works too.
    parent = str(path_from_uri(state.uri).parent)
    c = backend.load_sampler(job.model_spec, CheckpointRef(uri=parent)).sample(
        Prompt(text="the"), greedy
    )
    assert c.result()[0].tokens == a.tokens


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_export_formats_write_safetensors_checkpoints(
    backend: LocalBackend, make_job: Callable[..., Any], fmt: str
) -> None:
    """gguf/onnx are export formats: checkpoints stay safetensors (the run exports the
    final weights in the format afterwards, see crucible_core.train.steps.export_final)."""
    session = backend.create_session(make_job(checkpoint_policy=CheckpointPolicy(format=fmt)))
    ref = session.save_weights_for_sampler("x").result().checkpoint
    assert ref is not None
    assert list(path_from_uri(ref.uri).rglob("*.safetensors"))


def test_gguf_policy_of_a_non_llama_model_is_refused_before_training(
    backend: LocalBackend, make_job: Callable[..., Any]
) -> None:
    job = make_job(
        model_spec=ModelSpec(name="tiny-gpt2"), checkpoint_policy=CheckpointPolicy(format="gguf")
    )
    with pytest.raises(UnsupportedError, match="architecture 'gpt2' is not supported"):
        backend.create_session(job)


def test_load_state_refuses_a_checkpoint_that_does_not_fit(
    backend: LocalBackend,
    make_job: Callable[..., Any],
    datums: Callable[..., list[Datum]],
    tmp_path: Path,
) -> None:
    lora = backend.create_session(make_job())
    full = backend.create_session(make_job(adapter_config=Full()))
    ref = lora.save_state("x").result()
    with pytest.raises(ConfigError, match="adapter is 'lora', this session's is 'full'"):
        full.load_state(ref).result()
    sampler = lora.save_weights_for_sampler("x").result()
    with pytest.raises(ConfigError, match="not a crucible-local state checkpoint"):
        lora.load_state(sampler.checkpoint).result()  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="does not exist"):
        lora.load_state(CheckpointRef(uri=str(tmp_path / "nothing")))
    with pytest.raises(ConfigError, match="reads file:// URIs or paths, not tinker://"):
        lora.load_state(CheckpointRef(uri="tinker://run/weights/1"))


def test_lm_head_adapter_saves_without_copying_base_embeddings(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    """train_unembed (the Tinker SDK's default) puts LoRA on lm_head; saving must not warn
    (pytest runs with -W error) nor store the untouched base embeddings."""
    job = make_job(adapter_config=LoRA(rank=4, target_modules=["q_proj"], train_unembed=True))
    session = backend.create_session(job)
    batch = datums(session.tokenizer, ["the cat sat on the mat"])
    _steps(session, [batch])
    sampler = session.save_weights_for_sampler("unembed").result()
    assert sampler.checkpoint is not None
    directory = path_from_uri(sampler.checkpoint.uri)
    from safetensors.torch import load_file

    names = list(load_file(str(directory / "adapter_model.safetensors")))
    assert any("lm_head" in n and "lora_" in n for n in names)
    assert not any(n.endswith("embed_tokens.weight") for n in names)
    session.close()


def test_checkpoint_size_estimate_is_close_to_what_is_written(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    job = make_job(adapter_config=LoRA(rank=8, target_modules=["all-linear"]))
    estimate = backend.estimate_checkpoint_bytes(job)
    session = backend.create_session(job)
    _steps(session, [datums(session.tokenizer, ["the cat sat on the mat"])])
    state = path_from_uri(session.save_state("size").result().uri)
    sampler_ref = session.save_weights_for_sampler("size").result().checkpoint
    assert sampler_ref is not None
    sampler = path_from_uri(sampler_ref.uri)
    session.close()

    def size(d: Path) -> int:
        return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())

    assert size(state) == pytest.approx(estimate["state"], rel=0.25)
    assert size(sampler) == pytest.approx(estimate["sampler"], rel=0.5)


def test_leftovers_of_a_killed_save_are_cleaned_when_the_next_session_starts(
    backend: LocalBackend, make_job: Callable[..., Any], tmp_path: Path
) -> None:
    """What ``atomic_dir`` leaves when its process dies between mkdir and the final rename."""
    root = tmp_path / "run" / "checkpoints"
    half = root / "step-000004" / ".state.tmp-1a2b3c4d"  # died while writing
    half.mkdir(parents=True)
    (half / "trainable.safetensors").write_bytes(b"half")
    swapped = root / "step-000008" / ".state.old-5e6f7a8b"  # died between the two renames
    swapped.mkdir(parents=True)
    (swapped / "crucible_checkpoint.json").write_text("{}")
    stale = root / "final" / ".sampler.old-9c0d1e2f"  # died after the rename, before cleanup
    stale.mkdir(parents=True)
    (root / "final" / "sampler").mkdir()
    session = backend.create_session(make_job(max_steps=1), run_dir=tmp_path / "run")
    try:
        assert not half.exists()
        assert not swapped.exists()
        assert (root / "step-000008" / "state" / "crucible_checkpoint.json").read_text() == "{}"
        assert not stale.exists()
        assert (root / "final" / "sampler").is_dir()
    finally:
        session.close()


def test_check_export_names_why_a_format_cannot_be_written() -> None:
    """What `crucible plan` and `crucible export` refuse, before loading anything."""
    from crucible_local.export import check_export

    with pytest.raises(UnsupportedError, match="trained every weight") as err:
        check_export(ModelSpec(name="tiny-llama"), "peft", lora=False)
    assert "merged or safetensors-full" in (err.value.hint or "")
    with pytest.raises(UnsupportedError, match="architecture 'gpt2' is not supported"):
        check_export(ModelSpec(name="tiny-gpt2"), "gguf", lora=True)
    check_export(ModelSpec(name="tiny-llama"), "gguf", lora=True)
    check_export(ModelSpec(name="tiny-gpt2"), "onnx", lora=False)

"""Bad configuration fails early with a crucible error naming the field and the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crucible_local.backend import LocalBackend

from crucible_core.errors import (
    BackendError,
    ConfigError,
    UnsupportedError,
    ValidationError,
    exit_code_for,
)
from crucible_core.ir.backend import AdamParams, Datum, LossFnInputs
from crucible_core.ir.codec import convert
from crucible_core.ir.training import LoRA, Loss, ModelSpec, QLoRA, Scheduler, TrainingJob


def test_rank_zero_is_refused_by_ir_decoding() -> None:
    doc = {
        "model_spec": {"name": "tiny-llama"},
        "dataset_spec": {"uri": "x.jsonl"},
        "adapter_config": {"kind": "lora", "rank": 0},
    }
    with pytest.raises(ValidationError, match=r"\$\.adapter_config\.rank") as info:
        convert(doc, TrainingJob)
    assert exit_code_for(info.value) == 2


def test_absent_target_module_lists_the_models_layers(
    backend: LocalBackend, make_job: Callable[..., Any]
) -> None:
    job = make_job(adapter_config=LoRA(target_modules=["q_proj", "c_attn"]))
    with pytest.raises(ConfigError, match=r"'c_attn' matches no layer") as info:
        backend.create_session(job)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in str(info.value)
    assert exit_code_for(info.value) == 2


def test_unknown_model_lists_the_models(
    backend: LocalBackend, make_job: Callable[..., Any]
) -> None:
    with pytest.raises(ConfigError, match=r"no model 'tiny-lama'.*tiny-llama, tiny-gpt2") as info:
        backend.create_session(make_job(model_spec=ModelSpec(name="tiny-lama")))
    assert "did you mean 'tiny-llama'" in str(info.value)
    assert "model_spec.path" in str(info.value)
    # A hub id is looked up in the local cache (never downloaded): missing, the error
    # names it and the command that pre-downloads it.
    with pytest.raises(
        ConfigError, match=r"model 'meta-llama/Llama-3\.2-1B' is not in the local Hugging Face"
    ) as hub:
        backend.get_tokenizer(ModelSpec(name="meta-llama/Llama-3.2-1B"))
    assert "hf download meta-llama/Llama-3.2-1B" in str(hub.value)


def test_model_paths_that_are_not_model_directories(
    backend: LocalBackend, make_job: Callable[..., Any], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"model_spec\.path: .* is not a directory"):
        backend.create_session(make_job(model_spec=ModelSpec(name="m", path=str(tmp_path / "x"))))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        backend.create_session(make_job(model_spec=ModelSpec(name="m", path=str(tmp_path))))


def test_qlora_is_unsupported_and_says_what_is(
    backend: LocalBackend, make_job: Callable[..., Any]
) -> None:
    with pytest.raises(UnsupportedError, match=r"'qlora'.*supported adapters: lora, full") as info:
        backend.create_session(make_job(adapter_config=QLoRA()))
    assert exit_code_for(info.value) == 2


@pytest.mark.parametrize(
    ("adapter", "model", "message"),
    [
        (LoRA(target_modules=["q_proj"], train_attn=False), "tiny-llama", "leave no layer"),
        (LoRA(target_modules=["c_attn"], train_unembed=True), "tiny-gpt2", "ties its output"),
        (LoRA(target_modules=["lm_head"]), "tiny-gpt2", "ties its output"),
    ],
)
def test_adapter_combinations_that_cannot_work(
    backend: LocalBackend, make_job: Callable[..., Any], adapter: LoRA, model: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        backend.create_session(make_job(model_spec=ModelSpec(name=model), adapter_config=adapter))


def test_train_flags_filter_and_extend_the_targets(
    backend: LocalBackend, make_job: Callable[..., Any]
) -> None:
    session = backend.create_session(
        make_job(
            adapter_config=LoRA(target_modules=["all-linear"], train_mlp=False, train_unembed=True)
        )
    )
    targets = set(session.torch_model.peft_config["default"].target_modules)
    assert "lm_head" in targets
    assert "model.layers.1.self_attn.o_proj" in targets
    assert not any("mlp" in t for t in targets)


def test_other_unsupported_settings(
    backend: LocalBackend, make_job: Callable[..., Any], tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedError, match="float16"):
        backend.create_session(make_job(model_spec=ModelSpec(name="tiny-llama", dtype="float16")))
    epochs_only = make_job(scheduler=Scheduler(name="cosine"), max_steps=None, epochs=1)
    backend.create_session(epochs_only).close()  # the caller computes the schedule
    scheduling = LocalBackend(home=tmp_path, lr_schedule="session")
    with pytest.raises(ConfigError, match=r"'cosine' needs learning_config\.max_steps"):
        scheduling.create_session(epochs_only)
    with pytest.raises(ConfigError, match=r"'hidden' not understood.*accepted options"):
        backend.create_session(
            make_job(model_spec=ModelSpec(name="tiny-llama", options={"hidden": 8}))
        )
    with pytest.raises(ConfigError, match="lr_schedule"):
        LocalBackend(lr_schedule="server")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="num_threads"):
        LocalBackend(num_threads=0)


def test_bad_batches_and_loss_settings_raise_at_submission(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    session = backend.create_session(
        make_job(model_spec=ModelSpec(name="tiny-llama", max_seq_len=32))
    )
    batch = datums(session.tokenizer, ["short text", "another one"])
    with pytest.raises(ConfigError, match=r"'clip' not understood by the ppo loss.*clip_range"):
        session.forward_backward(batch, Loss(name="ppo", params={"clip": 0.1}))
    with pytest.raises(ConfigError, match=r"batch\[0\]\.loss_fn_inputs\.logprobs is missing"):
        session.forward_backward(batch, Loss(name="ppo"))
    with pytest.raises(ConfigError, match=r"dpo loss takes \(chosen, rejected\) pairs; got 1"):
        session.forward_backward(batch[:1], Loss(name="dpo"))
    with pytest.raises(ConfigError, match=r"params\.beta: expected a number > 0"):
        session.forward_backward(batch, Loss(name="dpo", params={"beta": -1}))
    too_long = datums(session.tokenizer, ["x" * 40])
    with pytest.raises(ConfigError, match=r"batch\[0\]\.model_input has 39 tokens.*32"):
        session.forward(too_long, Loss())
    bad_token = Datum(model_input=[1, 500], loss_fn_inputs=LossFnInputs(target_tokens=[2, 3]))
    with pytest.raises(ConfigError, match=r"batch\[0\]\.model_input holds token id 500"):
        session.forward([bad_token], Loss())
    with pytest.raises(ConfigError, match="at least one Datum"):
        session.forward([], Loss())


def test_a_closed_session_refuses_work(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    session = backend.create_session(make_job())
    session.close()
    assert session.closed
    with pytest.raises(BackendError, match="is closed"):
        session.optim_step(AdamParams())
    with pytest.raises(BackendError, match="is closed"):
        session.forward(datums(session.tokenizer), Loss())

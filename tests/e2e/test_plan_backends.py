"""`crucible plan` refuses each unsupported setting on each shipped backend (table-driven)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from crucible_core.ir import TrainingJob, convert, decode_file
from crucible_core.plugins import PluginHost
from crucible_core.train.plan import make_plan

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = msgspec.to_builtins(
    decode_file(ROOT / "examples" / "sft-local.toml", TrainingJob)
)


def job(backend: str | dict[str, Any], **changes: Any) -> TrainingJob:
    raw = json.loads(json.dumps(BASE))
    raw["backend"] = backend
    for path, value in changes.items():
        node = raw
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return convert(raw, TrainingJob)


@pytest.fixture
def real_host(monkeypatch: pytest.MonkeyPatch) -> PluginHost:
    monkeypatch.setenv("TINKER_API_KEY", "tml-plan-only-never-sent")
    monkeypatch.delenv("CRUCIBLE_PLUGINS", raising=False)
    return PluginHost()


REFUSALS: list[tuple[str, dict[str, Any], str, str]] = [
    # backend, change, refused field, words of the message
    ("local", {"adapter_config": {"kind": "qlora"}}, "$.adapter_config.kind", "adapter 'qlora'"),
    (
        "local",
        {"checkpoint_policy__format": "gguf", "model_spec__name": "tiny-gpt2"},
        "$.checkpoint_policy.format",
        "--format gguf: architecture 'gpt2' is not supported",
    ),
    ("local", {"model_spec__name": "tiny-lama"}, "$.model_spec.name", "model 'tiny-lama'"),
    ("local", {"model_spec__max_seq_len": 4096}, "$.model_spec.max_seq_len", "beyond the context"),
    (
        "local",
        {"dataset_spec__max_length": 2048},
        "$.dataset_spec.max_length",
        "beyond the context",
    ),
    (
        "tinker",
        {"checkpoint_policy__push_to_hub": True, "checkpoint_policy__hub_repo": "me/x"},
        "$.checkpoint_policy.push_to_hub",
        "cannot push",
    ),
    (
        "local",
        {"adapter_config": {"kind": "lora", "rank": 2**63 - 1}},
        "$.adapter_config.rank",
        f"LoRA ranks up to 64, the job asks for {2**63 - 1}",
    ),
    ("tinker", {"adapter_config": {"kind": "full"}}, "$.adapter_config.kind", "adapter 'full'"),
    ("tinker", {"adapter_config": {"kind": "qlora"}}, "$.adapter_config.kind", "adapter 'qlora'"),
    ("tinker", {"learning_config__loss": {"name": "dpo"}}, "$.learning_config.loss.name", "'dpo'"),
    (
        "tinker",
        {"learning_config__optimizer": {"name": "sgd"}},
        "$.learning_config.optimizer.name",
        "optimizer 'sgd'",
    ),
    ("tinker", {"checkpoint_policy__format": "pytorch"}, "$.checkpoint_policy.format", "'pytorch'"),
    ("tinker", {"model_spec__path": "/models/mine"}, "$.model_spec.path", "local path"),
]


@pytest.mark.parametrize(("backend", "change", "field", "words"), REFUSALS)
def test_each_unsupported_setting_is_refused(
    real_host: PluginHost, backend: str, change: dict[str, Any], field: str, words: str
) -> None:
    plan = make_plan(job(backend, **change), host=real_host, count_data=False)
    assert not plan.ok
    problem = next((p for p in plan.problems if p.field == field), None)
    assert problem is not None, [p.field for p in plan.problems]
    assert words in problem.message
    assert problem.backend == backend


#: Settings the backend supports but no stage of the training run can feed: (change,
#: refused field, words of the message). Not the backend's doing, so no backend is named.
PIPELINE_REFUSALS: list[tuple[dict[str, Any], str, str]] = [
    (
        {"learning_config__loss": {"name": "dpo"}},
        "$.learning_config.loss.name",
        "loss 'dpo' needs loss_fn_inputs.ref_logprobs, which no stage",
    ),
    (
        {"learning_config__loss": {"name": "ppo"}},
        "$.learning_config.loss.name",
        "loss_fn_inputs.logprobs, loss_fn_inputs.advantages",
    ),
    (
        {"learning_config__loss": {"name": "importance_sampling"}},
        "$.learning_config.loss.name",
        "loss_fn_inputs.logprobs, loss_fn_inputs.advantages",
    ),
    (
        {"validation_spec": {"metrics": ["loss", "accuracy"]}},
        "$.validation_spec.metrics[1]",
        "cannot compute the validation metric 'accuracy'",
    ),
]


@pytest.mark.parametrize(("change", "field", "words"), PIPELINE_REFUSALS)
def test_what_no_stage_provides_is_refused(
    real_host: PluginHost, change: dict[str, Any], field: str, words: str
) -> None:
    plan = make_plan(job("local", **change), host=real_host, count_data=False)
    assert not plan.ok
    assert [p.field for p in plan.problems] == [field]
    assert words in plan.problems[0].message
    assert plan.problems[0].hint


@pytest.mark.parametrize("backend", ["local", "tinker"])
def test_the_example_is_accepted_as_is(real_host: PluginHost, backend: str) -> None:
    plan = make_plan(job(backend), host=real_host, count_data=False)
    assert plan.ok, plan.problems


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_an_export_format_the_backend_writes_is_accepted_with_a_note(
    real_host: PluginHost, fmt: str
) -> None:
    """gguf/onnx as checkpoint_policy.format: crucible-local exports the final weights."""
    plan = make_plan(job("local", checkpoint_policy__format=fmt), host=real_host, count_data=False)
    assert plan.ok, plan.problems
    assert any(f"also exported as {fmt} to <run>/exports/{fmt}" in n for n in plan.notes)


def test_all_problems_are_reported_at_once(real_host: PluginHost) -> None:
    bad = job(
        "tinker",
        adapter_config={"kind": "full"},
        learning_config__loss={"name": "dpo"},
        checkpoint_policy__format="pytorch",
    )
    plan = make_plan(bad, host=real_host, count_data=False)
    assert {p.field for p in plan.problems} == {
        "$.adapter_config.kind",
        "$.learning_config.loss.name",
        "$.checkpoint_policy.format",
    }


def test_declared_prices_give_a_cost_and_a_budget_note(real_host: PluginHost) -> None:
    options = {
        "costs": {"train_per_mtok": 0.4},
        "throughput_tokens_per_s": 2000.0,
        "tokenizer_backend": "local",
    }
    priced = job({"name": "tinker", "options": options}, budget={"max_cost": 0.001})
    plan = make_plan(priced, host=real_host, measure=False)
    assert plan.ok, plan.problems
    assert plan.tokens_to_train is not None
    assert plan.cost == pytest.approx(plan.tokens_to_train * 0.4 / 1e6)
    assert plan.duration_basis == "declared"
    assert plan.duration_s == pytest.approx(plan.tokens_to_train / 2000.0)
    assert any("exceeds budget.max_cost" in n for n in plan.notes)

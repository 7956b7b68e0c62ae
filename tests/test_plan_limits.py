"""``crucible plan`` on absurd or unsupported settings: fast, and refused where it must be."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crucible_core.ir import (
    AdamW,
    Capabilities,
    CheckpointPolicy,
    DatasetSpec,
    Datum,
    Full,
    LearningConfig,
    LoRA,
    LossFnInputs,
    ModelSpec,
    TrainingJob,
)
from crucible_core.ir.training import Loss, ValidationSpec
from crucible_core.plugins import PluginHost, Registration
from crucible_core.train import loop as trainloop
from crucible_core.train.plan import (
    MAX_LISTED_CHECKPOINTS,
    _checkpoint_steps,  # pyright: ignore[reportPrivateUsage]
    _tokens_to_train,  # pyright: ignore[reportPrivateUsage]
    check_capabilities,
    check_pipeline,
    make_plan,
)
from tests.toy_backend import toy_plugin

HUGE = 2**63 - 1


@pytest.fixture
def toy(host: PluginHost, crucible_home: Path) -> PluginHost:
    host.add_plugin(toy_plugin(), name="toy")
    return host


def make_job(**changes: Any) -> TrainingJob:
    job = TrainingJob(
        backend="toy",
        model_spec=ModelSpec(name="toy"),
        adapter_config=Full(),
        dataset_spec=DatasetSpec(uri="mem"),
        learning_config=LearningConfig(optimizer=AdamW(lr=0.02), batch_size=4, max_steps=12),
        checkpoint_policy=CheckpointPolicy(save_every=4, keep_last=2, save_best=False),
    )
    return msgspec.structs.replace(job, **changes)


def _datums(lengths: list[int]) -> list[Datum]:
    return [
        Datum(model_input=[1] * n, loss_fn_inputs=LossFnInputs(target_tokens=[1] * n))
        for n in lengths
    ]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=12),
    batch_size=st.integers(1, 5),
    grad_accum=st.integers(1, 3),
    total=st.integers(1, 40),
    seed=st.integers(0, 3),
    shuffle=st.booleans(),
)
def test_closed_form_tokens_equal_the_step_by_step_count(
    lengths: list[int], batch_size: int, grad_accum: int, total: int, seed: int, shuffle: bool
) -> None:
    datums = _datums(lengths)
    cfg = LearningConfig(batch_size=batch_size, grad_accum=grad_accum, max_steps=total, seed=seed)
    walked = sum(
        sum(
            len(d.model_input)
            for d in trainloop.batch_for_step(datums, s, m, cfg, shuffle=shuffle)[0]
        )
        for s in range(total)
        for m in range(grad_accum)
    )
    assert _tokens_to_train(datums, total, cfg, shuffle=shuffle) == walked


@settings(max_examples=100, deadline=None)
@given(total=st.integers(1, 300), every=st.integers(1, 40))
def test_checkpoint_steps_match_the_loop_rule(total: int, every: int) -> None:
    job = make_job(checkpoint_policy=CheckpointPolicy(save_every=every))
    saved = [s for s in range(1, total + 1) if s % every == 0 or s == total]  # trainloop's rule
    steps, count = _checkpoint_steps(job, total)
    assert count == len(saved)
    if count <= MAX_LISTED_CHECKPOINTS:
        assert steps == saved
    else:
        half = MAX_LISTED_CHECKPOINTS // 2
        assert steps == saved[:half] + saved[-half:]


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    max_steps=st.integers(1, HUGE),
    save_every=st.integers(1, HUGE),
    grad_accum=st.integers(1, 2**20),
)
def test_plan_time_is_bounded_for_huge_runs(
    toy: PluginHost, max_steps: int, save_every: int, grad_accum: int
) -> None:
    job = make_job(
        learning_config=LearningConfig(batch_size=4, grad_accum=grad_accum, max_steps=max_steps),
        checkpoint_policy=CheckpointPolicy(save_every=save_every),
    )
    start = time.perf_counter()
    plan = make_plan(job, host=toy, measure=False)
    assert time.perf_counter() - start < 10
    assert plan.ok, plan.problems
    assert plan.steps == max_steps
    assert plan.state_checkpoints == -(-max_steps // save_every)
    assert len(plan.checkpoints) <= MAX_LISTED_CHECKPOINTS + 1  # + the sampler
    assert plan.checkpoints[-1].step == max_steps
    assert plan.tokens_to_train is not None
    assert plan.tokens_per_epoch is not None
    assert plan.tokens_to_train >= plan.tokens_per_epoch * (max_steps * grad_accum * 4 // 36)


def test_plan_of_the_largest_max_steps_is_fast(toy: PluginHost) -> None:
    job = make_job(learning_config=LearningConfig(batch_size=4, max_steps=HUGE))
    start = time.perf_counter()
    plan = make_plan(job, host=toy, measure=False)
    assert time.perf_counter() - start < 10
    assert plan.ok
    assert plan.steps == HUGE
    assert any("state checkpoints" in n for n in plan.notes)


_CAPS = Capabilities(
    backend_id="toy",
    supports_training=True,
    losses=["cross_entropy"],
    adapters=["lora", "full"],
    optimizers=["adamw"],
    schedulers=["constant"],
    checkpoint_formats=["safetensors"],
    max_context_length=128,
    max_lora_rank=64,
    metadata={"models_by_path": True},
)


def test_plan_refuses_a_lora_rank_beyond_the_backend_limit() -> None:
    problems = check_capabilities(make_job(adapter_config=LoRA(rank=HUGE)), _CAPS, "toy")
    assert [p.field for p in problems] == ["$.adapter_config.rank"]
    assert str(HUGE) in problems[0].message
    assert "64" in problems[0].message
    assert check_capabilities(make_job(adapter_config=LoRA(rank=64)), _CAPS, "toy") == []


def test_plan_refuses_a_sequence_length_beyond_the_context() -> None:
    job = make_job(dataset_spec=DatasetSpec(uri="mem", max_length=HUGE))
    problems = check_capabilities(job, _CAPS, "toy")
    assert [p.field for p in problems] == ["$.dataset_spec.max_length"]
    assert str(HUGE) in problems[0].message
    assert "128" in problems[0].message


def test_declared_limits_apply_to_the_backends_own_models_only() -> None:
    by_path = ModelSpec(name="mine", path="/models/mine")
    job = make_job(model_spec=by_path, adapter_config=LoRA(rank=128))
    assert check_capabilities(job, _CAPS, "toy") == []


def _stages(**metadata: Any) -> dict[str, Registration]:
    return {
        "data.load": Registration(kind="stage", name="data.load", factory="x:y"),
        "data.tokenize": Registration(
            kind="stage", name="data.tokenize", factory="x:y", metadata=metadata
        ),
    }


def test_validation_metrics_the_run_cannot_compute_are_refused() -> None:
    job = make_job(validation_spec=ValidationSpec(metrics=["loss", "perplexty", "accuracy"]))
    problems = check_pipeline(job, _stages())
    assert [p.field for p in problems] == [
        "$.validation_spec.metrics[1]",
        "$.validation_spec.metrics[2]",
    ]
    assert problems[0].hint is not None
    assert problems[0].hint.startswith("did you mean 'perplexity'?")
    assert "'accuracy'" in problems[1].message
    # Loss-based metrics and those scored from samples of held-out prompts are computed.
    computed = ["loss", "perplexity", "exact_match", "bleu", "token_f1"]
    ok = make_job(validation_spec=ValidationSpec(metrics=computed))
    assert check_pipeline(ok, _stages()) == []


def test_a_loss_needs_a_stage_that_provides_its_inputs() -> None:
    dpo = make_job(learning_config=LearningConfig(loss=Loss(name="dpo")))
    (problem,) = check_pipeline(dpo, _stages())
    assert problem.field == "$.learning_config.loss.name"
    assert "loss_fn_inputs.ref_logprobs" in problem.message
    assert problem.supported == ["cross_entropy"]
    # A stage that declares the input makes the loss plannable.
    assert check_pipeline(dpo, _stages(loss_fn_inputs=["ref_logprobs"])) == []
    # A loss the backend does not support is check_capabilities' to report, once.
    assert check_pipeline(dpo, _stages(), _CAPS) == []


def test_the_human_plan_elides_the_middle_checkpoints(toy: PluginHost) -> None:
    from crucible_core.cli.plan_cmd import format_plan

    job = make_job(
        learning_config=LearningConfig(batch_size=4, max_steps=1000),
        checkpoint_policy=CheckpointPolicy(save_every=10),
    )
    text = format_plan(make_plan(job, host=toy, measure=False))
    lines = [line for line in text.splitlines() if line.startswith("checkpoint")]
    assert len(lines) == MAX_LISTED_CHECKPOINTS + 2  # + the elision + the sampler
    assert lines[10] == "checkpoint ... 80 more state checkpoints ..."
    assert lines[9].startswith("checkpoint step 100 ")
    assert lines[11].startswith("checkpoint step 910 ")

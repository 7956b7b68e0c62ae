"""The DPO workflow's pure parts: the IR fields, the plan's refusal, pair batching, the loss.

The end-to-end runs on crucible-local (both loss routes, the reference cache)
are in ``plugins/crucible-local/tests/test_dpo.py``.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.errors import ValidationError
from crucible_core.ir import (
    Capabilities,
    DPOConfig,
    LearningConfig,
    Loss,
    TrainingJob,
    convert,
)
from crucible_core.ir.backend import Datum, LossFnInputs
from crucible_core.train.dpo import dpo_job, dpo_route
from crucible_core.train.plan import check_capabilities, check_pipeline
from crucible_core.train.preference import dpo_terms
from crucible_core.train.schedule import batch_for_step, total_steps


def _job(**fields: object) -> TrainingJob:
    doc: dict[str, object] = {
        "model_spec": {"name": "tiny-llama"},
        "dataset_spec": {"uri": "sample:preference"},
        **fields,
    }
    return convert(doc, TrainingJob)


def _caps(losses: list[str], logprobs: bool) -> Capabilities:
    return Capabilities(
        backend_id="b",
        supports_training=True,
        supports_logprobs=logprobs,
        losses=losses,
        adapters=["lora"],
        optimizers=["adamw"],
        schedulers=["constant"],
        checkpoint_formats=["safetensors"],
    )


def test_workflow_defaults_to_sft_and_dpo_settings_are_validated() -> None:
    assert _job().workflow == "sft"
    job = _job(workflow="dpo", dpo={"beta": 0.5, "reference": "file:///ckpt"})
    assert job.dpo_config == DPOConfig(beta=0.5, reference="file:///ckpt")
    assert _job(workflow="dpo").dpo_config == DPOConfig()  # beta 0.1, reference "base"
    with pytest.raises(ValidationError, match="only used with workflow"):
        _job(dpo={"beta": 0.5})
    with pytest.raises(ValidationError, match="beta"):
        _job(workflow="dpo", dpo={"beta": 0})
    with pytest.raises(ValidationError, match="workflow"):
        _job(workflow="ppo")
    with pytest.raises(ValidationError, match=r"leave learning_config\.loss unset"):
        _job(workflow="dpo", learning_config={"loss": {"name": "ppo"}})


def test_dpo_job_sets_the_loss_from_the_dpo_settings() -> None:
    job = dpo_job(_job(workflow="dpo", dpo={"beta": 0.25}))
    assert job.learning_config.loss == Loss(name="dpo", params={"beta": 0.25})


def test_plan_refuses_dpo_on_a_backend_with_neither_the_loss_nor_logprobs() -> None:
    job = _job(workflow="dpo")
    bare = _caps(["cross_entropy", "importance_sampling"], logprobs=False)
    (problem,) = check_capabilities(job, bare, "plain")
    assert problem.field == "$.workflow"
    assert "backend 'plain' cannot run workflow = \"dpo\"" in problem.message
    assert "losses: cross_entropy, importance_sampling" in problem.message
    assert problem.hint is not None
    assert "importance_sampling" in problem.hint
    assert dpo_route(bare) is None
    # Logprobs without the importance_sampling loss leave no route either.
    assert check_capabilities(job, _caps(["cross_entropy"], logprobs=True), "p")[0].field == (
        "$.workflow"
    )
    # Either route is accepted, and the job's own (default) loss is not checked.
    logprobs = _caps(["importance_sampling"], logprobs=True)
    assert check_capabilities(job, logprobs, "p") == []
    assert dpo_route(logprobs) == "logprobs"
    assert check_capabilities(job, _caps(["dpo"], logprobs=False), "p") == []
    assert dpo_route(_caps(["dpo"], logprobs=False)) == "backend"
    # The recipe attaches ref_logprobs: no stage has to declare them.
    assert check_pipeline(job, {}) == []
    # An SFT job is still refused a loss the backend lacks.
    sft = _job(learning_config={"loss": {"name": "ppo"}})
    assert check_capabilities(sft, logprobs, "p")[0].field == "$.learning_config.loss.name"


def _datum(n: int, tag: int) -> Datum:
    return Datum(model_input=[tag] * n, loss_fn_inputs=LossFnInputs(target_tokens=[tag] * n))


@given(
    pairs=st.integers(1, 40),
    batch=st.integers(1, 9),
    accum=st.integers(1, 3),
    seed=st.integers(0, 5),
    shuffle=st.booleans(),
    steps=st.integers(1, 30),
)
def test_pair_batches_keep_pairs_whole_and_cover_each_once_per_epoch(
    pairs: int, batch: int, accum: int, seed: int, shuffle: bool, steps: int
) -> None:
    data = [_datum(1 + (i % 3), i) for i in range(2 * pairs)]
    cfg = LearningConfig(batch_size=batch, grad_accum=accum, seed=seed, max_steps=steps)
    seen: list[int] = []
    per_epoch = math.ceil(pairs / batch)
    for index in range(per_epoch):
        step, micro = divmod(index, accum)
        got, _ = batch_for_step(data, step, micro, cfg, shuffle=shuffle, group=2)
        tags = [d.model_input[0] for d in got]
        assert len(tags) <= 2 * batch
        assert all(c % 2 == 0 and r == c + 1 for c, r in zip(tags[0::2], tags[1::2], strict=True))
        seen.extend(tags[0::2])
    assert sorted(seen) == list(range(0, 2 * pairs, 2))
    # One epoch counts pairs, not datums.
    by_epoch = LearningConfig(batch_size=batch, grad_accum=1, seed=seed, epochs=1, max_steps=None)
    assert total_steps(by_epoch, pairs) == per_epoch


def test_group_one_batches_are_unchanged() -> None:
    data = [_datum(2, i) for i in range(10)]
    cfg = LearningConfig(batch_size=3, seed=4, max_steps=5)
    for step in range(5):
        assert batch_for_step(data, step, 0, cfg) == batch_for_step(data, step, 0, cfg, group=1)


def _pair_batch(rng: random.Random, pairs: int) -> tuple[list[Datum], list[list[float]]]:
    data: list[Datum] = []
    logprobs: list[list[float]] = []
    for _ in range(2 * pairs):
        n = rng.randint(2, 6)
        weights = [0.0] + [float(rng.random() < 0.7) for _ in range(n - 1)]
        ref = [-rng.random() * 3 for _ in range(n)]
        inputs = LossFnInputs(target_tokens=[1] * n, weights=weights, ref_logprobs=ref)
        data.append(Datum(model_input=[1] * n, loss_fn_inputs=inputs))
        logprobs.append([-rng.random() * 3 for _ in range(n)])
    return data, logprobs


def test_dpo_terms_gradient_matches_finite_differences() -> None:
    rng = random.Random(7)
    data, logprobs = _pair_batch(rng, 3)
    beta = 0.7
    terms = dpo_terms(data, logprobs, beta)
    eps = 1e-6
    for i, row in enumerate(logprobs):
        for t in range(len(row)):
            up = [list(r) for r in logprobs]
            down = [list(r) for r in logprobs]
            up[i][t] += eps
            down[i][t] -= eps
            numeric = (dpo_terms(data, up, beta).loss - dpo_terms(data, down, beta).loss) / (
                2 * eps
            )
            assert terms.grads[i][t] == pytest.approx(numeric, abs=1e-6)


def test_dpo_terms_at_the_reference_is_log_two_with_no_accuracy() -> None:
    rng = random.Random(1)
    data, _ = _pair_batch(rng, 4)
    at_ref = [list(d.loss_fn_inputs.ref_logprobs or []) for d in data]
    terms = dpo_terms(data, at_ref, 0.1)
    assert terms.loss == pytest.approx(math.log(2))
    assert terms.metrics["accuracy"] == 0.0
    assert terms.metrics["margin"] == 0.0
    assert terms.metrics["pairs"] == 4.0
    # Raising every chosen sequence's log-probability makes every pair right.
    better = [[v + (1.0 if i % 2 == 0 else 0.0) for v in row] for i, row in enumerate(at_ref)]
    assert dpo_terms(data, better, 0.1).metrics["accuracy"] == 1.0


def test_the_dpo_example_decodes() -> None:
    from crucible_core.ir import decode_file

    example = Path(__file__).parents[1] / "examples" / "dpo-local.toml"
    job = decode_file(example, TrainingJob)
    assert job.workflow == "dpo"
    assert job.dpo_config == DPOConfig(beta=0.1, reference="base")
    assert job.dataset_spec.uri == "sample:preference"


def test_cli_shows_the_workflow_and_refuses_a_wrong_dpo_job_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crucible_core.cli.main import main

    assert main(["ir", "show", "TrainingJob"]) == 0
    assert 'workflow = "sft"' in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'workflow = "sft"\n[model_spec]\nname = "m"\n[dataset_spec]\nuri = "d"\n[dpo]\nbeta = 0.2\n'
    )
    assert main(["ir", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert 'dpo` settings are only used with workflow = "dpo"' in err
    assert "Traceback" not in err

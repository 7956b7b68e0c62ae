"""``workflow = "dpo"`` end to end on crucible-local with the shipped preference sample.

Two routes train the same model: the backend's own ``dpo`` loss, and (on a
backend that hides it, keeping logprobs and ``importance_sampling``) the DPO
loss computed from the session's logprobs. The reference logprobs are
computed once and read from the cache by the second run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crucible_datasets.plugin
import crucible_local.plugin
import msgspec
import pytest
from crucible_local.backend import LocalBackend

from crucible_core.ir import (
    AdamW,
    Capabilities,
    CheckpointPolicy,
    DatasetSpec,
    DPOConfig,
    LearningConfig,
    LoRA,
    ModelSpec,
    TrainingJob,
)
from crucible_core.plugins import PluginHost, reset_host
from crucible_core.records.artifacts import read_manifest
from crucible_core.train.reference import reference_logprobs
from crucible_core.train.run import run_training


class NoDPOBackend(LocalBackend):
    """crucible-local declaring only cross_entropy and importance_sampling (plus logprobs):
    a third-party backend without the dpo loss."""

    def capabilities(self) -> Capabilities:
        caps = super().capabilities()
        return msgspec.structs.replace(caps, losses=["cross_entropy", "importance_sampling"])


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "crucible-home"
    monkeypatch.setenv("CRUCIBLE_HOME", str(path))
    return path


@pytest.fixture
def host() -> Iterator[PluginHost]:
    h = PluginHost(autoload=False)
    h.add_plugin(crucible_local.plugin, name="local", distribution="crucible-local")
    h.add_plugin(crucible_datasets.plugin, name="datasets", distribution="crucible-datasets")
    reset_host(h)
    yield h
    reset_host(None)


def _job(steps: int = 20) -> TrainingJob:
    return TrainingJob(
        backend="local",
        model_spec=ModelSpec(name="tiny-llama"),
        adapter_config=LoRA(rank=8, dropout=0.0),
        dataset_spec=DatasetSpec(uri="sample:preference"),
        learning_config=LearningConfig(optimizer=AdamW(lr=1e-3), batch_size=4, max_steps=steps),
        checkpoint_policy=CheckpointPolicy(save_every=1000, save_best=False),
        workflow="dpo",
        dpo=DPOConfig(beta=0.1),
    )


def _events(run: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run / "telemetry.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def _flat(rows: list[list[float]]) -> list[float]:
    return [v for row in rows for v in row]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_dpo_learns_the_preferences_by_either_loss_route(
    host: PluginHost, home: Path, tmp_path: Path
) -> None:
    out = run_training(_job(), job_id="dpo-backend", host=host)
    run = home / "runs" / "dpo-backend"
    steps = _events(run, "train.step")
    assert len(steps) == 20
    metrics = [e["data"]["metrics"] for e in steps]
    for name in ("accuracy", "margin", "logps:chosen", "logps:rejected", "reward:chosen"):
        assert all(name in m for m in metrics), name
    # Step 1 scores the reference's own weights: loss log 2, no margin, no pair right.
    assert out.initial_loss == pytest.approx(math.log(2), abs=1e-6)
    assert metrics[0]["accuracy"] == 0.0
    assert abs(metrics[0]["margin"]) < 1e-6
    # Then the loss falls and accuracy and margin rise (means of the first/last 5 steps).
    losses = [e["data"]["loss"] for e in steps]
    assert _mean(losses[-5:]) < _mean(losses[:5]) - 0.1
    assert _mean([m["accuracy"] for m in metrics[-5:]]) > _mean(
        [m["accuracy"] for m in metrics[:5]]
    )
    assert _mean([m["margin"] for m in metrics[-5:]]) > _mean([m["margin"] for m in metrics[:5]])
    assert out.final_loss is not None
    assert out.final_loss < 0.5
    # After training, on 32 training pairs: most preferences are right.
    assert out.evaluation["split"] == "train_sample"
    assert out.evaluation["eval_accuracy"] >= 0.75
    assert out.evaluation["eval_margin"] > 0.3
    assert out.evaluation["eval_loss"] < math.log(2)
    manifest = read_manifest(run)
    assert manifest["status"] == "succeeded"
    assert manifest["training_job"]["workflow"] == "dpo"
    assert list(manifest["stages"]) == [
        "prepare",
        "reference",
        "train",
        "evaluate",
        "save",
        "log_metrics",
    ]
    (ref,) = _events(run, "dpo.reference")
    assert ref["data"]["route"] == "backend"
    assert ref["data"]["cached"] is False
    assert ref["data"]["computed_with"] == "training session before the first step"
    cache = home / "cache" / "dpo-reference" / f"{ref['data']['key']}.json"
    assert cache.exists()

    # The same job on a backend without the dpo loss: computed from logprobs, same curve.
    other = NoDPOBackend(home=tmp_path / "nodpo", num_threads=1)
    try:
        again = run_training(_job(), job_id="dpo-logprobs", host=host, backend=other)
    finally:
        other.close()
    run2 = home / "runs" / "dpo-logprobs"
    (ref2,) = _events(run2, "dpo.reference")
    assert (ref2["data"]["route"], ref2["data"]["cached"]) == ("logprobs", True)
    assert ref2["data"]["key"] == ref["data"]["key"]
    losses2 = [e["data"]["loss"] for e in _events(run2, "train.step")]
    assert losses2 == pytest.approx(losses, abs=1e-4)
    assert again.evaluation["eval_accuracy"] == pytest.approx(out.evaluation["eval_accuracy"])


def test_reference_from_a_second_session_and_from_a_checkpoint(
    host: PluginHost, home: Path, tmp_path: Path
) -> None:
    """A resumed run's base reference comes from a fresh session and equals the training
    session's; a checkpoint reference scores that checkpoint's weights."""
    from crucible_core.ir.backend import AdamParams, Datum, LossFnInputs
    from crucible_core.ir.training import Loss

    backend = LocalBackend(home=tmp_path / "b", num_threads=1)
    try:
        job = _job()
        session = backend.create_session(job, run_dir=tmp_path / "run")
        tok = session.tokenizer
        ids = tok.encode("What is 2 plus 2? 2 plus 2 is 4.")
        wrong = tok.encode("What is 2 plus 2? 2 plus 2 is 5.")
        data = [
            Datum(
                model_input=t[:-1],
                loss_fn_inputs=LossFnInputs(target_tokens=t[1:], weights=[1.0] * (len(t) - 1)),
            )
            for t in (ids, wrong)
        ]
        kwargs: dict[str, Any] = {
            "dataset_hash": "sha256:x",
            "train": data,
            "validation": [],
            "backend": backend,
            "deadline_s": 120.0,
        }
        own = reference_logprobs(job, session=session, **kwargs)
        for path in (home / "cache" / "dpo-reference").iterdir():
            path.unlink()
        how: list[str] = []
        fresh = reference_logprobs(job, session=None, on_compute=how.append, **kwargs)
        assert how == ["a fresh session of the base model"]
        assert _flat(fresh.train) == pytest.approx(_flat(own.train), abs=1e-6)
        assert reference_logprobs(job, session=None, **kwargs).cached
        # Train a few steps, save, and use that checkpoint as the reference.
        for _ in range(5):
            session.forward_backward(data[:1], Loss())
            session.optim_step(AdamParams(learning_rate=1e-2))
        saved = session.save_state("ref").result(timeout=120)
        trained = session.forward(data, Loss()).result(timeout=120).logprobs
        session.close()
        at_ckpt = msgspec.structs.replace(job, dpo=DPOConfig(reference=saved.uri))
        how.clear()
        ckpt = reference_logprobs(at_ckpt, session=None, on_compute=how.append, **kwargs)
        assert how == [f"checkpoint {saved.uri}"]
        assert not ckpt.cached
        assert ckpt.key != own.key
        assert _flat(ckpt.train) == pytest.approx(_flat(trained), abs=1e-5)
        assert sum(ckpt.train[0]) > sum(own.train[0]) + 1.0  # it learned the first sequence
    finally:
        backend.close()


def test_dpo_runs_as_stages_of_an_experiment_graph(host: PluginHost, home: Path) -> None:
    """train.loop of the stage adapters runs the DPO recipe's reference step and loss."""
    from crucible_core.ir import Job
    from crucible_core.pipeline.runner import run_pipeline
    from crucible_core.train.plan import training_experiment

    job = _job(steps=8)
    work = Job(id="g-dpo", kind="training_run", payload=msgspec.to_builtins(job))
    out = run_pipeline(training_experiment(job, "g-dpo"), work, host=host)
    summary = out["log_metrics"]
    assert summary["steps"] == 8
    assert summary["initial_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert summary["final_loss"] < summary["initial_loss"]
    assert "eval_accuracy" in summary["evaluation"]
    (ref,) = _events(home / "runs" / "g-dpo", "dpo.reference")
    assert ref["data"]["route"] == "backend"


def test_a_stopped_dpo_run_resumes_on_the_same_curve(host: PluginHost, home: Path) -> None:
    """A budget stop then resume: with the cache gone, the resumed run (whose session is no
    longer the base) computes the reference in a fresh session of the base, and continues
    with the losses of an uninterrupted run."""
    from crucible_core.errors import BudgetExhausted
    from crucible_core.ir import Budget
    from crucible_core.train.state import read_loop_state

    job = msgspec.structs.replace(
        _job(steps=8), checkpoint_policy=CheckpointPolicy(save_every=2, save_best=False)
    )
    run_training(job, job_id="whole", host=host)
    whole = json.loads((home / "runs/whole/metrics.json").read_text())["losses"]
    with pytest.raises(BudgetExhausted):
        run_training(
            msgspec.structs.replace(job, budget=Budget(max_tokens=2000)), job_id="cut", host=host
        )
    state = read_loop_state(home / "runs" / "cut")
    assert 0 < state.step < 8
    for path in (home / "cache" / "dpo-reference").iterdir():
        path.unlink()
    resumed = run_training(job, job_id="cut", host=host, resume=state)
    assert resumed.steps == 8
    refs = [r["data"] for r in _events(home / "runs" / "cut", "dpo.reference")]
    assert refs[0]["cached"] is True  # the first attempt read what "whole" computed
    assert (refs[1]["cached"], refs[1]["computed_with"]) == (
        False,
        "a fresh session of the base model",
    )
    tail = json.loads((home / "runs/cut/metrics.json").read_text())["losses"]
    assert tail == pytest.approx(whole[state.step :], abs=1e-5)

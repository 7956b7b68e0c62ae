"""Sampled held-out metrics: greedy samples of exactly the given prompts, scored by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from crucible_core.cli.main import main
from crucible_core.ir import Full, ModelSpec, TrainingJob, encode
from crucible_core.ir.training import DatasetSpec, ValidationSpec
from crucible_core.plugins import PluginHost
from crucible_core.records.events import read_telemetry
from crucible_core.train.run import run_training
from crucible_core.train.sampled_eval import (
    SAMPLED_METRICS,
    evaluate_samples,
    sampled_metric_names,
)
from crucible_core.train.state import read_loop_state
from tests.test_training_workflow import make_job
from tests.toy_backend import ToySession, toy_plugin


@pytest.fixture
def toy(host: PluginHost, crucible_home: Path) -> PluginHost:
    host.add_plugin(toy_plugin(), name="toy")
    return host


def _job(*metrics: str) -> TrainingJob:
    return TrainingJob(
        backend="toy",
        model_spec=ModelSpec(name="toy", max_seq_len=64),
        adapter_config=Full(),
        dataset_spec=DatasetSpec(uri="mem", validation_ratio=0.5),
        validation_spec=ValidationSpec(metrics=list(metrics)),
    )


def _answering(answer: str) -> ToySession:
    """A bigram session that answers ``answer`` (one character) after ``>``, then stops."""
    session = ToySession()
    session.w[:, :] = -50.0
    session.w[ord(">"), ord(answer)] = 50.0
    session.w[ord(answer), 0] = 50.0
    session.w[0, 0] = 50.0
    return session


def _prompts(*pairs: tuple[str, str]) -> list[dict[str, object]]:
    return [{"tokens": list(f"{q}>".encode()), "reference": ref, "input": q} for q, ref in pairs]


def test_scores_greedy_samples_of_the_prompts_against_their_answers() -> None:
    job = _job("loss", "exact_match", "token_f1")
    prompts = _prompts(("q1", "A"), ("q2", "B"), ("q3", "A"), ("q4", "C"))
    result = evaluate_samples(_answering("A"), job, prompts, name="t", deadline_s=10)
    assert result is not None
    assert result.examples == 4
    assert result.scores == {"exact_match": 0.5, "token_f1": 0.5}
    assert [(s.input, s.output, s.reference) for s in result.samples] == [
        ("q1", "A", "A"),
        ("q2", "A", "B"),
        ("q3", "A", "A"),
    ]


def test_no_sampled_metric_or_no_prompt_means_no_sampling() -> None:
    session = _answering("A")
    assert (
        evaluate_samples(session, _job("loss"), _prompts(("q", "A")), name="t", deadline_s=10)
        is None
    )
    assert evaluate_samples(session, _job("exact_match"), [], name="t", deadline_s=10) is None
    no_spec = msgspec.structs.replace(_job(), validation_spec=None)
    assert sampled_metric_names(no_spec) == []


def test_metric_names_keep_the_jobs_order_and_skip_loss() -> None:
    job = _job("rouge_l", "loss", "exact_match", "perplexity")
    assert sampled_metric_names(job) == ["rouge_l", "exact_match"]
    assert "loss" not in SAMPLED_METRICS
    assert "pass_at_k" not in SAMPLED_METRICS  # its references are programs, not answers


def test_a_run_scores_held_out_prompts_before_and_after_and_resume_skips_before(
    toy: PluginHost, crucible_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import types

    from crucible_core import hookimpl

    def register_metrics(register: Any) -> None:
        register("token_f1", "crucible_datasets.metrics:token_f1")

    toy.add_plugin(
        types.SimpleNamespace(register_metrics=hookimpl(register_metrics)), name="metrics"
    )
    job = msgspec.structs.replace(
        make_job(), validation_spec=ValidationSpec(metrics=["loss", "token_f1"])
    )
    path = tmp_path / "job.json"
    path.write_bytes(encode(job))
    assert main(["train", str(path), "--job-id", "scored", "--no-progress"]) == 0
    out = capsys.readouterr().out
    outcome = json.loads((crucible_home / "runs" / "scored" / "metrics.json").read_text())
    sampled = outcome["evaluation"]["sampled"]
    before, after = sampled["before"], sampled["after"]
    assert before["examples"] == after["examples"] == 4  # the 4 validation rows
    assert after["scores"]["token_f1"] > before["scores"]["token_f1"]
    assert {s["input"] for s in after["samples"]} <= {"row 36", "row 37", "row 38", "row 39"}
    assert "token_f1 0.00 before training -> " in out
    assert 'crucible sample scored --prompt "row 36" --chat --temperature 0' in out
    events = [e for e in read_telemetry("scored") if e.kind == "eval.metric" and "when" in e.data]
    assert [(e.data["when"], e.step) for e in events] == [("before", 0), ("after", 12)]

    state = read_loop_state(crucible_home / "runs" / "scored")
    resumed = run_training(job, job_id="scored", host=toy, resume=state)
    assert resumed.evaluation["sampled"]["before"] is None
    assert resumed.evaluation["sampled"]["after"]["examples"] == 4


def test_every_n_steps_scores_sampled_metrics_against_the_checkpoint_of_that_step(
    toy: PluginHost, crucible_home: Path, tmp_path: Path
) -> None:
    """The schedule: step 0, every ``every_n_steps``, the end. Each point is an event and a
    manifest entry naming the state checkpoint of its step, and its score is the score of
    exactly that checkpoint's weights (not of a later step already in flight)."""
    import types

    from crucible_core import hookimpl
    from crucible_core.ir.backend import CheckpointRef
    from crucible_core.ir.training import CheckpointPolicy
    from crucible_core.records.artifacts import read_manifest
    from tests.toy_backend import TEXTS

    def register_metrics(register: Any) -> None:
        register("token_f1", "crucible_datasets.metrics:token_f1")

    toy.add_plugin(
        types.SimpleNamespace(register_metrics=hookimpl(register_metrics)), name="metrics"
    )
    job = make_job(
        validation_spec=ValidationSpec(every_n_steps=4, metrics=["loss", "token_f1"]),
        checkpoint_policy=CheckpointPolicy(save_every=4, keep_last=3, save_best=False),
    )
    outcome = run_training(job, job_id="curve", host=toy)
    events = [e for e in read_telemetry("curve") if e.kind == "eval.metric" and "when" in e.data]
    assert [(e.data["when"], e.step) for e in events] == [
        ("before", 0), ("step", 4), ("step", 8), ("after", 12)
    ]  # fmt: skip
    manifest = read_manifest(crucible_home / "runs" / "curve")
    points = manifest["sampled_evals"]
    assert [(p["step"], p["when"]) for p in points] == [
        (0, "before"), (4, "step"), (8, "step"), (12, "after")
    ]  # fmt: skip
    by_step = {c["step"]: c["ref"]["uri"] for c in manifest["checkpoints"]}
    assert points[0].get("checkpoint") is None  # the base weights: no checkpoint
    assert [p["checkpoint"] for p in points[1:]] == [by_step[4], by_step[8], by_step[12]]
    assert [e.data["checkpoint"] for e in events[1:]] == [by_step[4], by_step[8], by_step[12]]
    assert [e.data["metrics"]["token_f1"] for e in events] == [
        p["scores"]["token_f1"] for p in points
    ]
    curve = [p["scores"]["token_f1"] for p in points]
    assert curve[-1] > curve[0]
    during = outcome.evaluation["sampled"]["during"]
    assert during == [{"step": 4, "scores": points[1]["scores"]},
                      {"step": 8, "scores": points[2]["scores"]}]  # fmt: skip
    from crucible_core.cli.train_cmd import format_sampled

    text = format_sampled(outcome.evaluation["sampled"])
    assert f"token_f1 during training: {curve[1]:.2f} at step 4, {curve[2]:.2f} at step 8\n" in text

    # Re-score the step-4 checkpoint in a fresh session: the logged score is its score.
    backend = toy.create("backend", "toy")
    tok = backend.get_tokenizer(job.model_spec)
    prompts = [
        {"tokens": tok.encode(head + ":"), "reference": rest.strip(), "input": head}
        for head, _, rest in (t.partition(":") for t in TEXTS[36:])
    ]  # what the toy data.tokenize stage makes of the 4 validation rows
    for step, point in ((4, points[1]), (8, points[2])):
        session = backend.create_session(job, run_dir=tmp_path / f"again-{step}")
        session.load_state(CheckpointRef(uri=by_step[step], kind="state")).result()
        again = evaluate_samples(session, job, prompts, name="again", deadline_s=10, host=toy)
        assert again is not None
        assert again.scores == point["scores"]

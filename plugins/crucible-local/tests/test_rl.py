"""``workflow = "rl"`` end to end on crucible-local: examples/rl-local.toml's task,
"answer with the number N", on the built-in tiny-llama.

The reward rises over a few steps; every sample is stamped with the weight
version it came from, within the staleness bound; a reward that fails stops
the run after a checkpoint and the resumed run continues on the curve of an
uninterrupted one; ``crucible plan`` refuses a backend without a sampler.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crucible_datasets.plugin
import crucible_local.plugin
import msgspec
import pytest
from crucible_datasets.rewards import number
from crucible_local.backend import LocalBackend

from crucible_core.errors import ConfigError
from crucible_core.hookspecs import hookimpl
from crucible_core.ir import Capabilities, TrainingJob, decode_file
from crucible_core.ir.training import CheckpointPolicy, RLConfig
from crucible_core.plugins import PluginHost, reset_host
from crucible_core.records.artifacts import read_manifest
from crucible_core.train.plan import make_plan
from crucible_core.train.run import run_training
from crucible_core.train.state import read_loop_state

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "rl-local.toml"

#: Calls of the ``flaky`` reward after which it fails (None: never).
FAIL_AFTER: dict[str, int | None] = {"calls": None}
CALLS = {"n": 0}


def flaky(completion: str, reference: str) -> float:
    """The ``number`` reward, failing (returning text) once FAIL_AFTER calls were made."""
    CALLS["n"] += 1
    limit = FAIL_AFTER["calls"]
    if limit is not None and CALLS["n"] > limit:
        return "seven"  # type: ignore[return-value]  # the bad input under test
    return number(completion, reference)


def register_rewards(register: Any) -> None:
    register("flaky", flaky, summary="number, failing on demand")


class NoSamplerBackend(LocalBackend):
    """crucible-local declaring no inference: a training-only backend without a sampler."""

    def capabilities(self) -> Capabilities:
        return msgspec.structs.replace(super().capabilities(), supports_inference=False)


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
    h.add_plugin(
        types.SimpleNamespace(register_rewards=hookimpl(register_rewards)), name="flaky-rewards"
    )
    reset_host(h)
    FAIL_AFTER["calls"] = None
    CALLS["n"] = 0
    yield h
    reset_host(None)


def _example(**rl: Any) -> TrainingJob:
    job = decode_file(EXAMPLE, TrainingJob)
    if rl:
        job = msgspec.structs.replace(job, rl=msgspec.structs.replace(job.rl_config, **rl))
    return job


def _events(run: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run / "telemetry.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_mean_reward_rises_on_the_number_task(host: PluginHost, home: Path) -> None:
    job = _example()
    assert job.rl_config.max_off_policy_steps == 1
    out = run_training(job, job_id="rl", host=host)
    run = home / "runs" / "rl"
    steps = _events(run, "train.step")
    assert [e["step"] for e in steps] == list(range(1, 13))
    metrics = [e["data"]["metrics"] for e in steps]
    for name in ("reward:mean", "reward:std", "kl", "staleness", "version"):
        assert all(name in m for m in metrics), name
    rewards = [m["reward:mean"] for m in metrics]
    assert _mean(rewards[-4:]) > _mean(rewards[:4]) + 0.05, rewards
    # Overlapped: step 1 samples the base, every later step the weights one step older.
    assert [m["version"] for m in metrics] == [0.0, *range(11)]
    assert [m["staleness"] for m in metrics] == [0.0] + [1.0] * 11
    # KL to the base: none on the base's own samples, growing as the policy moves.
    assert abs(metrics[0]["kl"]) < 1e-4
    assert metrics[-1]["kl"] > 0.05
    samples = _events(run, "rl.samples")
    assert [e["step"] for e in samples] == list(range(1, 13))
    for event in samples:
        data = event["data"]
        assert len(data["samples"]) == 4 * 8  # batch_size prompts x group_size
        assert {s["version"] for s in data["samples"]} == {data["version"]}
        assert data["staleness"] == event["step"] - 1 - data["version"]
    manifest = read_manifest(run)
    assert manifest["status"] == "succeeded"
    assert manifest["training_job"]["workflow"] == "rl"
    assert list(manifest["stages"]) == ["prepare", "train", "evaluate", "save", "log_metrics"]
    assert out.steps == 12
    assert out.sampler_checkpoint is not None
    # The sampler weights of each version are deleted once no step or resume needs them:
    # resuming the finished run needs none.
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert [k for k in kept if k.startswith("rl-v")] == []
    assert json.loads((run / "rl_samplers.json").read_text()) == {}


def test_strictly_on_policy_with_the_ppo_loss(host: PluginHost, home: Path) -> None:
    job = _example(max_off_policy_steps=0, loss="ppo")
    job = msgspec.structs.replace(
        job, learning_config=msgspec.structs.replace(job.learning_config, max_steps=3)
    )
    run_training(job, job_id="onp", host=host)
    metrics = [e["data"]["metrics"] for e in _events(home / "runs" / "onp", "train.step")]
    assert [m["staleness"] for m in metrics] == [0.0, 0.0, 0.0]
    assert [m["version"] for m in metrics] == [0.0, 1.0, 2.0]
    assert all("clip_fraction" in m for m in metrics)  # the backend computed ppo
    # On-policy: the trainer's logprobs are the sampler's, so the ratio is 1 at step 1.
    assert metrics[0]["ratio:mean"] == pytest.approx(1.0, abs=1e-3)


def test_rl_with_the_gspo_loss_takes_the_sequence_ratio_over_each_completion(
    host: PluginHost, home: Path
) -> None:
    job = _example(max_off_policy_steps=0, loss="gspo", group_size=4, report_kl=False)
    learning = msgspec.structs.replace(job.learning_config, max_steps=1, batch_size=2)
    run_training(msgspec.structs.replace(job, learning_config=learning), job_id="g", host=host)
    (metrics,) = [e["data"]["metrics"] for e in _events(home / "runs" / "g", "train.step")]
    # The backend computed gspo over the completions' ratio masks: on-policy, every
    # sequence ratio is 1.
    assert metrics["sequence_ratio:mean"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["clip_fraction"] == 0.0


def test_a_failing_reward_stops_after_a_checkpoint_and_the_resume_keeps_the_curve(
    host: PluginHost, home: Path
) -> None:
    """The reward returns text on a sample of step 5: the run stops after saving step 4
    (the loop's stop: drain, checkpoint, raise), naming the reward and the sample. Fixed
    and resumed, it continues with exactly the losses and rewards of an uninterrupted run:
    step 5 samples the version-3 weights again, loaded from rl_samplers.json."""
    job = msgspec.structs.replace(
        _example(reward="flaky"),
        learning_config=msgspec.structs.replace(_example().learning_config, max_steps=6),
        checkpoint_policy=CheckpointPolicy(save_every=100, save_best=False),
    )
    run_training(job, job_id="whole", host=host)
    whole = [e["data"] for e in _events(home / "runs" / "whole", "train.step")]
    per_step = 4 * 8
    FAIL_AFTER["calls"] = CALLS["n"] + 4 * per_step + 3  # fails inside step 5's batch
    with pytest.raises(ConfigError) as info:
        run_training(job, job_id="cut", host=host)
    assert "reward 'flaky' returned 'seven'" in info.value.message
    assert "step 5, prompt" in info.value.message
    run = home / "runs" / "cut"
    state = read_loop_state(run)
    assert state.step == 4
    assert state.checkpoints[-1].step == 4
    # Step 5 samples from version 3 (one step stale): its weights are kept for the resume.
    assert list(json.loads((run / "rl_samplers.json").read_text())) == ["3", "4"]
    (stopped,) = _events(run, "train.stopped")
    assert stopped["data"]["reason"] == "reward_error"
    FAIL_AFTER["calls"] = None
    resumed = run_training(job, job_id="cut", host=host, resume=state)
    assert resumed.steps == 6
    after = [e["data"] for e in _events(run, "train.step")][-2:]
    for got, want in zip(after, whole[4:], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
        assert got["metrics"]["reward:mean"] == pytest.approx(want["metrics"]["reward:mean"])
        assert got["metrics"]["version"] == want["metrics"]["version"]


def test_plan_refuses_rl_on_a_backend_without_a_sampler_and_counts_sampling(
    host: PluginHost, home: Path, tmp_path: Path
) -> None:
    job = _example()
    plan = make_plan(job, host=host, measure=False)
    assert plan.ok, plan.problems
    assert plan.steps == 12
    assert plan.sampling_tokens == 12 * 4 * 8 * 4
    assert plan.tokens_to_train is not None
    assert plan.tokens_to_train > plan.sampling_tokens
    assert plan.stages[1].startswith("train (train.loop (sample")

    def register_backends(register: Any) -> None:
        register("trainonly", NoSamplerBackend, capabilities=None)

    host.add_plugin(
        types.SimpleNamespace(register_backends=hookimpl(register_backends)), name="trainonly"
    )
    refused = make_plan(msgspec.structs.replace(job, backend="trainonly"), host=host)
    assert not refused.ok
    (problem,) = refused.problems
    assert problem.field == "$.workflow"
    assert 'cannot run workflow = "rl"' in problem.message
    assert "a sampler" in problem.message
    typo = make_plan(
        msgspec.structs.replace(job, rl=RLConfig(reward="numbr")), host=host, measure=False
    )
    assert [p.field for p in typo.problems] == ["$.rl.reward"]
    assert "did you mean 'number'?" in (typo.problems[0].hint or "")


def test_rl_runs_as_stages_of_an_experiment_graph(host: PluginHost, home: Path) -> None:
    """train.loop of the stage adapters runs the RL loop (sampled, scored batches), and
    train.evaluate scores greedy completions of the held-out prompts."""
    from crucible_core.ir import Job
    from crucible_core.pipeline.runner import run_pipeline
    from crucible_core.train.plan import training_experiment

    job = _example()
    job = msgspec.structs.replace(
        job,
        learning_config=msgspec.structs.replace(job.learning_config, max_steps=3),
        dataset_spec=msgspec.structs.replace(job.dataset_spec, validation_ratio=0.2),
    )
    work = Job(id="g-rl", kind="training_run", payload=msgspec.to_builtins(job))
    out = run_pipeline(training_experiment(job, "g-rl"), work, host=host)
    summary = out["log_metrics"]
    assert summary["steps"] == 3
    assert summary["evaluation"]["examples"] == 8
    assert 0.0 <= summary["evaluation"]["eval_reward"] <= 1.0
    metrics = [e["data"]["metrics"] for e in _events(home / "runs" / "g-rl", "train.step")]
    assert [m["version"] for m in metrics] == [0.0, 0.0, 1.0]


def test_a_budget_stopped_on_policy_run_resumes_on_the_same_curve(
    host: PluginHost, home: Path
) -> None:
    """Strictly on-policy (each step samples its own starting weights): a max_tokens stop
    then resume gives the losses and rewards of an uninterrupted run."""
    from crucible_core.errors import BudgetExhausted
    from crucible_core.ir import Budget

    base = _example(max_off_policy_steps=0)
    job = msgspec.structs.replace(
        base,
        learning_config=msgspec.structs.replace(base.learning_config, max_steps=4),
        checkpoint_policy=CheckpointPolicy(save_every=1, save_best=False, keep_last=2),
    )
    run_training(job, job_id="whole", host=host)
    whole = [e["data"] for e in _events(home / "runs" / "whole", "train.step")]
    total_tokens = read_loop_state(home / "runs" / "whole").tokens
    with pytest.raises(BudgetExhausted):
        run_training(
            msgspec.structs.replace(job, budget=Budget(max_tokens=total_tokens // 2)),
            job_id="cut",
            host=host,
        )
    state = read_loop_state(home / "runs" / "cut")
    assert 0 < state.step < 4
    run_training(job, job_id="cut", host=host, resume=state)
    after = [e["data"] for e in _events(home / "runs" / "cut", "train.step")][-(4 - state.step) :]
    for got, want in zip(after, whole[state.step :], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
        assert got["metrics"]["reward:mean"] == pytest.approx(want["metrics"]["reward:mean"])
        assert got["metrics"]["staleness"] == 0.0

"""``workflow = "distill"`` end to end on crucible-local.

The teacher is a run trained in the test (a few SFT steps on the shipped dates,
so it answers in a recognisable way); the student is a fresh tiny-llama. In mode
``"sft"`` the student's loss on the teacher's completions falls and its agreement
with the teacher rises; the teacher's completions are cached (a second run samples
nothing); in mode ``"on_policy"`` the reverse KL to the teacher on the student's own
samples falls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crucible_datasets.plugin
import crucible_local.plugin
import pytest

from crucible_core.ir import (
    AdamW,
    CheckpointPolicy,
    DatasetSpec,
    DistillConfig,
    Full,
    LearningConfig,
    ModelSpec,
    SamplingParams,
    TeacherSpec,
    TrainingJob,
)
from crucible_core.plugins import PluginHost, reset_host
from crucible_core.records.artifacts import read_manifest
from crucible_core.train.run import run_training

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[3]
DATES = str(REPO / "examples" / "data" / "dates.jsonl")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One CRUCIBLE_HOME for the module: the teacher is trained once."""
    path = tmp_path_factory.mktemp("distill") / "crucible-home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CRUCIBLE_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def host(home: Path) -> Iterator[PluginHost]:
    h = PluginHost(autoload=False)
    h.add_plugin(crucible_local.plugin, name="local", distribution="crucible-local")
    h.add_plugin(crucible_datasets.plugin, name="datasets", distribution="crucible-datasets")
    reset_host(h)
    yield h
    reset_host(None)


@pytest.fixture(scope="module")
def teacher(host: PluginHost) -> str:
    """A few SFT steps on the dates: the teacher writes dates its own (partly right) way."""
    job = TrainingJob(
        backend="local",
        model_spec=ModelSpec(name="tiny-llama", max_seq_len=128),
        adapter_config=Full(),
        dataset_spec=DatasetSpec(uri=DATES, limit=128),
        learning_config=_learning(40),
        checkpoint_policy=CheckpointPolicy(save_every=1000, save_best=False, keep_last=1),
    )
    run_training(job, job_id="teacher", host=host)
    return "teacher"


def _learning(steps: int, batch: int = 16, lr: float = 5e-3) -> LearningConfig:
    return LearningConfig(
        optimizer=AdamW(lr=lr, weight_decay=0.0), batch_size=batch, max_steps=steps
    )


def _student(teacher: str, *, mode: str = "sft", steps: int = 30, **sampling: Any) -> TrainingJob:
    return TrainingJob(
        backend="local",
        workflow="distill",
        distill=DistillConfig(
            teacher=TeacherSpec(run=teacher),
            mode=mode,  # pyright: ignore[reportArgumentType]
            sampling=SamplingParams(**{"max_tokens": 20, "temperature": 0.0, **sampling}),
        ),
        model_spec=ModelSpec(name="tiny-llama", max_seq_len=128),
        adapter_config=Full(),
        dataset_spec=DatasetSpec(uri=DATES, limit=72, validation_ratio=1 / 9),
        learning_config=_learning(steps),
        checkpoint_policy=CheckpointPolicy(save_every=1000, save_best=False, keep_last=1),
    )


def _events(run: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run / "telemetry.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_sft_distillation_follows_the_teacher(host: PluginHost, home: Path, teacher: str) -> None:
    out = run_training(_student(teacher), job_id="student", host=host)
    run = home / "runs" / "student"
    steps = _events(run, "train.step")
    assert len(steps) == 30
    losses = [e["data"]["loss"] for e in steps]
    agreement = [e["data"]["metrics"]["agreement"] for e in steps]
    kl = [e["data"]["metrics"]["teacher_kl"] for e in steps]
    # The student's loss on the teacher's completions falls, its agreement rises, and the
    # KL(teacher || student) estimate on the teacher's samples falls with the loss.
    assert _mean(losses[-5:]) < 0.5 * _mean(losses[:5])
    assert _mean(agreement[-5:]) > _mean(agreement[:5]) + 0.3
    assert _mean(kl[-5:]) < _mean(kl[:5])
    # Held-out prompts (never trained on): greedy answers agree with the teacher's more.
    held = out.evaluation["agreement"]
    assert held["split"] == "validation"
    assert held["after"]["token_match"] > held["before"]["token_match"] + 0.3
    assert held["after"]["exact_match"] >= held["before"]["exact_match"]
    (taught,) = _events(run, "distill.teacher")
    assert taught["data"]["cached"] is False
    assert taught["data"]["mode"] == "sft"
    assert taught["data"]["teacher"].startswith("checkpoint:")
    manifest = read_manifest(run)
    assert manifest["status"] == "succeeded"
    assert list(manifest["stages"]) == [
        "prepare",
        "teacher",
        "train",
        "evaluate",
        "save",
        "log_metrics",
    ]
    from crucible_core.records.lineage import LineageRecorder

    with LineageRecorder() as recorder:
        edges = recorder.edges(taught["data"]["teacher"])
    assert any(e.kind == "distilled_from" and e.dst == taught["data"]["teacher"] for e in edges), (
        edges
    )

    # The same teacher, data and sampling: the completions come from the cache.
    run_training(_student(teacher, steps=2), job_id="again", host=host)
    (again,) = _events(home / "runs" / "again", "distill.teacher")
    assert (again["data"]["cached"], again["data"]["key"]) == (True, taught["data"]["key"])


def test_on_policy_distillation_lowers_the_reverse_kl(
    host: PluginHost, home: Path, teacher: str
) -> None:
    run_training(
        _student(teacher, mode="on_policy", steps=16, temperature=1.0, max_tokens=16),
        job_id="on-policy",
        host=host,
    )
    steps = _events(home / "runs" / "on-policy", "train.step")
    assert len(steps) == 16
    kl = [e["data"]["loss"] for e in steps]
    assert [e["data"]["metrics"]["teacher_kl"] for e in steps] == pytest.approx(kl)
    agreement = [e["data"]["metrics"]["agreement"] for e in steps]
    # Measured: about 4.0 -> 3.3 nats per token over 16 steps.
    assert _mean(kl[-4:]) < _mean(kl[:4]) - 0.3
    assert _mean(agreement[-4:]) > _mean(agreement[:4])


def test_distill_runs_as_stages_of_an_experiment_graph(host: PluginHost, home: Path) -> None:
    """train.loop of the stage adapters runs the distillation recipe's teacher step (here
    the default teacher: the student's own base model) and trains on its completions."""
    import msgspec

    from crucible_core.ir import Job
    from crucible_core.pipeline.runner import run_pipeline
    from crucible_core.train.plan import training_experiment

    job = msgspec.structs.replace(
        _student("unused", steps=3),
        distill=DistillConfig(sampling=SamplingParams(max_tokens=8, temperature=0.0)),
        dataset_spec=DatasetSpec(uri=DATES, limit=12),
    )
    work = Job(id="g-distill", kind="training_run", payload=msgspec.to_builtins(job))
    out = run_pipeline(training_experiment(job, "g-distill"), work, host=host)
    assert out["log_metrics"]["steps"] == 3
    (taught,) = _events(home / "runs" / "g-distill", "distill.teacher")
    assert (taught["data"]["teacher"], taught["data"]["datums"]) == ("model:tiny-llama", 12)
    steps = _events(home / "runs" / "g-distill", "train.step")
    assert all("agreement" in e["data"]["metrics"] for e in steps)


def test_a_stopped_on_policy_run_resumes_on_the_same_curve(
    host: PluginHost, home: Path, teacher: str
) -> None:
    """A budget stop at step 2, then resume: the student's rollouts are seeded by (seed,
    step, micro-batch, prompt) and drawn from the restored weights, so the resumed steps
    sample and score what the uninterrupted run did, and the losses (reverse KL) match.
    The validation at step 2 (which the resumed run does not repeat) draws from seeds of
    its own, so it does not shift step 3's."""
    import msgspec

    from crucible_core.errors import BudgetExhausted
    from crucible_core.ir import Budget, ValidationSpec
    from crucible_core.train.state import read_loop_state

    job = msgspec.structs.replace(
        _student(teacher, mode="on_policy", steps=6, temperature=1.0, max_tokens=8),
        learning_config=_learning(6, batch=4),
        checkpoint_policy=CheckpointPolicy(save_every=2, save_best=False, keep_last=5),
        validation_spec=ValidationSpec(every_n_steps=2),
    )
    run_training(job, job_id="op-whole", host=host)
    whole = json.loads((home / "runs/op-whole/metrics.json").read_text())["losses"]
    assert len(whole) == 6
    assert len(_events(home / "runs" / "op-whole", "eval.metric")) >= 3
    at_2 = json.loads((home / "runs/op-whole/states/step-000002.json").read_text())
    # The state saved at step 2 counts the tokens submitted so far: step 3's too (two steps
    # in flight), so one token less stops the run before step 3.
    budget = Budget(max_tokens=at_2["tokens"] - 1)
    with pytest.raises(BudgetExhausted):
        run_training(msgspec.structs.replace(job, budget=budget), job_id="op-cut", host=host)
    state = read_loop_state(home / "runs" / "op-cut")
    assert state.step == 2
    resumed = run_training(job, job_id="op-cut", host=host, resume=state)
    assert resumed.steps == 6
    tail = json.loads((home / "runs/op-cut/metrics.json").read_text())["losses"]
    assert tail == pytest.approx(whole[2:], abs=1e-5)


def test_an_inference_only_teacher_sends_messages_and_is_refused_on_policy(
    host: PluginHost, home: Path
) -> None:
    """A teacher on ``local-adapter`` (an inference backend serving a LoRA run's adapter):
    it is sent the prompt's messages, its text is re-encoded for the student (so no teacher
    logprobs, no teacher_kl), and the plan refuses it for on-policy (it cannot score)."""
    import msgspec

    from crucible_core.ir import BackendRef, LoRA
    from crucible_core.train.plan import make_plan

    lora = TrainingJob(
        backend="local",
        model_spec=ModelSpec(name="tiny-llama", max_seq_len=128),
        adapter_config=LoRA(rank=4, dropout=0.0),
        dataset_spec=DatasetSpec(uri=DATES, limit=16),
        learning_config=_learning(2, batch=8),
        checkpoint_policy=CheckpointPolicy(save_every=1000, save_best=False, keep_last=1),
    )
    adapter = run_training(lora, job_id="lora-teacher", host=host).sampler_checkpoint
    assert adapter is not None
    served = BackendRef(name="local-adapter", options={"adapter": adapter.uri})
    job = msgspec.structs.replace(
        _student("unused", steps=2, max_tokens=6),
        distill=DistillConfig(
            teacher=TeacherSpec(backend=served),
            sampling=SamplingParams(max_tokens=6, temperature=0.0),
        ),
        dataset_spec=DatasetSpec(uri=DATES, limit=10),
    )
    assert make_plan(job, host=host, count_data=False).ok
    on_policy = msgspec.structs.replace(
        job, distill=msgspec.structs.replace(job.distill_config, mode="on_policy")
    )
    (problem,) = make_plan(on_policy, host=host, count_data=False).problems
    assert problem.field == "$.distill.teacher"
    assert "cannot score" in problem.message

    run_training(job, job_id="served", host=host)
    (taught,) = _events(home / "runs" / "served", "distill.teacher")
    assert (taught["data"]["backend"], taught["data"]["teacher"]) == (
        "local-adapter",
        "model:tiny-llama",
    )
    assert taught["data"]["datums"] == 10
    steps = _events(home / "runs" / "served", "train.step")
    assert len(steps) == 2
    assert all("agreement" in e["data"]["metrics"] for e in steps)
    assert all("teacher_kl" not in e["data"]["metrics"] for e in steps)


def test_teacher_completions_are_cached_and_a_damaged_cache_is_sampled_again(
    host: PluginHost, home: Path, tmp_path: Path
) -> None:
    """The cache returns what was sampled; a damaged file is not trusted: the teacher samples
    again, with the same seeds, so the same completions come back."""
    import contextlib

    import msgspec
    from crucible_local.backend import LocalBackend

    from crucible_core.train.teacher import (
        cache_path,
        open_teacher,
        resolve_teacher,
        teacher_completions,
    )

    sampling = SamplingParams(max_tokens=5, temperature=1.0, n=2)
    job = msgspec.structs.replace(_student("unused"), distill=DistillConfig(sampling=sampling))
    teacher = resolve_teacher(job)
    backend = LocalBackend(home=tmp_path / "b", num_threads=1)
    opened: list[int] = []

    def handle() -> contextlib.AbstractContextManager[Any]:
        opened.append(1)
        return open_teacher(teacher, backend, deadline_s=120)

    tok = backend.get_tokenizer(job.model_spec)
    prompts = [{"tokens": tok.encode(t)} for t in ("1999-01-02", "2020-12-31")]
    kwargs: dict[str, Any] = {
        "dataset_hash": "sha256:x",
        "prompts": prompts,
        "held_out": prompts[:1],
        "student_tokenizer": str(tok.name),
        "deadline_s": 120.0,
    }
    try:
        first = teacher_completions(handle, teacher, job, **kwargs)
        assert [len(c) for c in first.train] == [2, 2]
        assert len(first.validation) == 1
        again = teacher_completions(handle, teacher, job, **kwargs)
        assert (again.cached, opened) == (True, [1])
        assert again.train == first.train
        cache_path(first.key).write_text("{not json")
        resampled = teacher_completions(handle, teacher, job, **kwargs)
        assert (resampled.cached, opened) == (False, [1, 1])
        assert resampled.train == first.train  # seeded: the same completions
    finally:
        backend.close()

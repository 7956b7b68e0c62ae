"""The distillation workflow's pure parts: the IR fields, the student's Datums, the teacher
metrics, and the plan's refusals.

The end-to-end runs on crucible-local (both modes, the teacher cache) are in
``plugins/crucible-local/tests/test_distill.py``; kill -9 and resume in
``tests/e2e/test_distill_resume.py``.
"""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.errors import ValidationError
from crucible_core.ir import (
    Capabilities,
    DistillConfig,
    TeacherSpec,
    TrainingJob,
    convert,
)
from crucible_core.ir.backend import Datum, LossFnInputs
from crucible_core.train.distill import (
    completion_datum,
    distill_job,
    student_refusal,
    token_metrics,
)
from crucible_core.train.onpolicy import prompt_datums, sample_seed
from crucible_core.train.teacher import Teacher, resolve_teacher, teacher_refusal


def _job(**fields: object) -> TrainingJob:
    doc: dict[str, object] = {
        "model_spec": {"name": "tiny-llama"},
        "dataset_spec": {"uri": "sample:chat"},
        **fields,
    }
    return convert(doc, TrainingJob)


def test_distill_settings_are_validated() -> None:
    job = _job(workflow="distill")
    assert job.distill_config == DistillConfig()  # the student's own base as teacher, sft
    assert job.distill_config.sampling.max_tokens == 64
    spec = _job(
        workflow="distill",
        distill={"mode": "on_policy", "teacher": {"run": "main"}, "sampling": {"n": 4}},
    ).distill_config
    assert (spec.mode, spec.teacher, spec.sampling.n) == ("on_policy", TeacherSpec(run="main"), 4)
    with pytest.raises(ValidationError, match='only used with workflow = "distill"'):
        _job(distill={"mode": "sft"})
    with pytest.raises(ValidationError, match=r"leave learning_config\.loss unset"):
        _job(workflow="distill", learning_config={"loss": {"name": "ppo"}})
    with pytest.raises(ValidationError, match="drop backend, checkpoint"):
        _job(
            workflow="distill",
            distill={"teacher": {"run": "main", "backend": "local", "checkpoint": "file:///c"}},
        )
    with pytest.raises(ValidationError, match="mode"):
        _job(workflow="distill", distill={"mode": "offline"})
    with pytest.raises(ValidationError, match="tokenizer"):
        _job(
            workflow="distill",
            distill={"mode": "on_policy", "teacher": {"model_spec": {"name": "other"}}},
        )
    # sft mode takes a teacher with another tokenizer (its text is re-encoded).
    other = _job(workflow="distill", distill={"teacher": {"model_spec": {"name": "other"}}})
    assert other.distill_config.teacher.model_spec is not None


def test_distill_job_sets_the_loss_of_the_mode() -> None:
    assert distill_job(_job(workflow="distill")).learning_config.loss.name == "cross_entropy"
    on = _job(workflow="distill", distill={"mode": "on_policy"})
    assert distill_job(on).learning_config.loss.name == "importance_sampling"


def test_a_base_teacher_defaults_to_the_students_backend_and_model() -> None:
    job = _job(workflow="distill", backend="local")
    teacher = resolve_teacher(job)
    assert teacher.backend.name == "local"
    assert teacher.job.model_spec == job.model_spec
    assert teacher.job.workflow == "sft"
    assert teacher.checkpoint is None
    assert teacher.node == "model:tiny-llama"
    at = _job(workflow="distill", distill={"teacher": {"checkpoint": "file:///ck/step-1"}})
    assert resolve_teacher(at).node == "checkpoint:file:///ck/step-1"
    assert resolve_teacher(at).identity != teacher.identity


@given(
    prompt=st.lists(st.integers(0, 255), min_size=1, max_size=12),
    completion=st.lists(st.integers(0, 255), min_size=0, max_size=12),
    limit=st.one_of(st.none(), st.integers(1, 30)),
    with_lp=st.booleans(),
)
def test_completion_datum_weights_the_completion_only(
    prompt: list[int], completion: list[int], limit: int | None, with_lp: bool
) -> None:
    lps = [-(i + 1) / 10 for i in range(len(completion))] if with_lp else None
    datum = completion_datum(prompt, completion, lps, limit)
    seq = [*prompt, *completion][:limit] if limit is not None else [*prompt, *completion]
    kept = max(0, len(seq) - len(prompt))
    if kept == 0 or len(seq) < 2:
        assert datum is None
        return
    assert datum is not None
    inputs = datum.loss_fn_inputs
    assert [*datum.model_input, inputs.target_tokens[-1]] == seq
    assert inputs.target_tokens == seq[1:]
    weights = inputs.weights or []
    assert sum(weights) == kept
    assert all(w == 0 for w in weights[: len(prompt) - 1])
    if with_lp:
        ref = inputs.ref_logprobs or []
        # The teacher's logprob of completion token k sits where that token is the target.
        assert [ref[len(prompt) - 1 + k] for k in range(kept)] == (lps or [])[:kept]
    else:
        assert inputs.ref_logprobs is None


def _datum(weights: list[float], ref: list[float] | None) -> Datum:
    n = len(weights)
    inputs = LossFnInputs(target_tokens=[1] * n, weights=weights, ref_logprobs=ref)
    return Datum(model_input=[1] * n, loss_fn_inputs=inputs)


def test_token_metrics_count_the_weighted_tokens() -> None:
    batch = [_datum([0, 1, 1], [0.0, -0.1, -2.0]), _datum([1, 1], [-0.5, -0.5])]
    student = [[-9.0, math.log(0.9), math.log(0.2)], [math.log(0.6), -3.0]]
    got = token_metrics(batch, student)
    # Tokens with probability > 1/2: 0.9 and 0.6 of the four weighted ones.
    assert got["agreement"] == pytest.approx(2 / 4)
    kl = ((-0.1 - math.log(0.9)) + (-2.0 - math.log(0.2)) + (-0.5 - math.log(0.6)) + 2.5) / 4
    assert got["teacher_kl"] == pytest.approx(kl)
    # Without the teacher's logprobs there is no KL, only agreement.
    assert "teacher_kl" not in token_metrics([_datum([1], None)], [[-0.1]])
    assert token_metrics([_datum([0, 0], None)], [[-1.0, -1.0]]) == {}


def test_prompt_datums_and_seeds_are_deterministic() -> None:
    (datum,) = prompt_datums([{"tokens": [5, 6, 7]}])
    assert datum.model_input == [5, 6, 7]
    assert datum.loss_fn_inputs.weights == [0.0, 0.0, 0.0]
    assert sample_seed(0, 3, 0, 1) == sample_seed(0, 3, 0, 1)
    seeds = {
        sample_seed(s, st_, m, i)
        for s in (0, 1)
        for st_ in range(3)
        for m in (0, 1)
        for i in range(3)
    }
    assert len(seeds) == 36


def _caps(**fields: Any) -> Capabilities:
    return Capabilities(backend_id="b", **fields)


class _Backend:
    """A backend object with only the methods its role needs (capabilities decide the rest)."""

    def __init__(self, caps: Capabilities, *, trains: bool, infers: bool) -> None:
        self._caps = caps
        if trains:
            self.create_session = lambda *a, **k: None
        if infers:
            self.complete = lambda *a, **k: None

    def capabilities(self) -> Capabilities:
        return self._caps


def test_teacher_refusals_name_what_is_missing() -> None:
    teacher = Teacher(backend=_ref("t"), job=_job())
    trainer = _Backend(
        _caps(supports_training=True, supports_logprobs=True), trains=True, infers=False
    )
    assert teacher_refusal(trainer, "t", teacher, "sft") is None
    assert teacher_refusal(trainer, "t", teacher, "on_policy") is None
    server = _Backend(_caps(supports_inference=True), trains=False, infers=True)
    assert teacher_refusal(server, "t", teacher, "sft") is None
    why = teacher_refusal(server, "t", teacher, "on_policy")
    assert why is not None
    assert "cannot score" in why
    nothing = _Backend(_caps(supports_inference=False), trains=False, infers=False)
    why = teacher_refusal(nothing, "t", teacher, "sft")
    assert why is not None
    assert "teacher backend 't' cannot sample" in why
    ckpt = Teacher(backend=_ref("t"), job=_job(), checkpoint="file:///c")
    why = teacher_refusal(server, "t", ckpt, "sft")
    assert why is not None
    assert "cannot load the checkpoint" in why


def _ref(name: str) -> Any:
    from crucible_core.ir import BackendRef

    return BackendRef(name=name)


def test_student_refusals() -> None:
    job = _job(workflow="distill")
    assert student_refusal(job, "b", ["cross_entropy"], False) == ""
    assert "cross_entropy" in student_refusal(job, "b", ["ppo"], True)
    on = _job(workflow="distill", distill={"mode": "on_policy"})
    assert student_refusal(on, "b", ["importance_sampling"], True) == ""
    assert "importance_sampling" in student_refusal(on, "b", ["cross_entropy"], True)
    assert "logprobs: false" in student_refusal(on, "b", ["importance_sampling"], False)


def test_the_distill_example_decodes() -> None:
    from crucible_core.ir import decode_file

    example = Path(__file__).parents[1] / "examples" / "distill-local.toml"
    job = decode_file(example, TrainingJob)
    assert job.workflow == "distill"
    assert job.distill_config.teacher == TeacherSpec(run="dates")
    assert job.distill_config.sampling.temperature == 0.0


def test_cli_refuses_a_wrong_distill_job_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crucible_core.cli.main import main

    bad = tmp_path / "bad.toml"
    bad.write_text(
        'workflow = "sft"\n[model_spec]\nname = "m"\n[dataset_spec]\nuri = "d"\n'
        '[distill]\nmode = "sft"\n'
    )
    assert main(["ir", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert 'distill` settings are only used with workflow = "distill"' in err
    assert "Traceback" not in err


class MuteBackend:
    """A registered backend that neither trains nor serves completions (say, one that only
    lists models): a teacher it cannot be."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def capabilities(self) -> Capabilities:
        return Capabilities(backend_id="mute", supports_inference=False)

    def close(self) -> None:
        return None


def _register_mute(register: Any) -> None:
    register("mute", "tests.test_distill:MuteBackend", summary="lists models only")


@pytest.fixture
def plan_host() -> Any:
    import crucible_datasets.plugin
    import crucible_local.plugin

    from crucible_core import hookimpl
    from crucible_core.plugins import PluginHost, reset_host

    h = PluginHost(autoload=False)
    h.add_plugin(crucible_local.plugin, name="local", distribution="crucible-local")
    h.add_plugin(crucible_datasets.plugin, name="datasets", distribution="crucible-datasets")
    h.add_plugin(types.SimpleNamespace(register_backends=hookimpl(_register_mute)), name="mute")
    reset_host(h)
    yield h
    reset_host(None)


def test_plan_refuses_a_teacher_that_cannot_sample(
    plan_host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crucible_core.train.plan import make_plan

    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "home"))
    mute = _job(workflow="distill", backend="local", distill={"teacher": {"backend": "mute"}})
    plan = make_plan(mute, host=plan_host, count_data=False)
    assert not plan.ok
    (problem,) = plan.problems
    assert problem.field == "$.distill.teacher"
    assert "teacher backend 'mute' cannot sample" in problem.message
    missing = _job(workflow="distill", backend="local", distill={"teacher": {"run": "nope"}})
    (problem,) = make_plan(missing, host=plan_host, count_data=False).problems
    assert problem.field == "$.distill.teacher"
    assert "distill.teacher.run" in problem.message
    assert "nope" in problem.message
    unknown = _job(workflow="distill", backend="local", distill={"teacher": {"backend": "nah"}})
    (problem,) = make_plan(unknown, host=plan_host, count_data=False).problems
    assert problem.field == "$.distill.teacher.backend"
    # The student's own base model on the student's backend can teach.
    assert make_plan(_job(workflow="distill", backend="local"), host=plan_host, count_data=False).ok


def test_plan_counts_the_teachers_sampling(
    plan_host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crucible_core.train.plan import make_plan

    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "home"))
    job = _job(
        workflow="distill",
        backend="local",
        dataset_spec={"uri": "sample:chat", "limit": 20},
        learning_config={"batch_size": 4, "max_steps": 5},
        distill={"sampling": {"max_tokens": 10, "n": 2}},
    )
    plan = make_plan(job, host=plan_host, measure=False)
    assert plan.ok, plan.problems
    assert plan.rows == 20
    assert plan.tokens_per_epoch is not None
    prompts = plan.tokens_per_epoch
    # Two completions of at most 10 tokens for each of 20 prompts, plus the held-out
    # agreement (8 of the training prompts: the teacher, the student before and after).
    teacher = 2 * (prompts + 20 * 10)
    assert plan.sampling_tokens is not None
    assert teacher + 3 * 8 * 10 < plan.sampling_tokens < teacher + 3 * (prompts + 8 * 10)
    # 5 steps of 4 Datums, each a prompt and 10 completion tokens (minus the shift).
    assert plan.steps == 5
    assert plan.tokens_to_train is not None
    assert 20 * 9 < plan.tokens_to_train <= 20 * 9 + 2 * prompts
    assert any("max_tokens = 10" in note for note in plan.notes)
    from crucible_core.cli.plan_cmd import format_plan

    assert f"sampling  {plan.sampling_tokens} tokens" in format_plan(plan)
    assert "stages    prepare -> teacher -> train" in format_plan(plan)


def test_a_teachers_model_paths_resolve_against_the_job_file(tmp_path: Path) -> None:
    from crucible_core.ir import decode_file

    job_file = tmp_path / "jobs" / "distill.toml"
    job_file.parent.mkdir()
    job_file.write_text(
        'workflow = "distill"\n[model_spec]\nname = "tiny-llama"\n[dataset_spec]\n'
        'uri = "sample:chat"\n[distill.teacher.model_spec]\nname = "tiny-llama"\n'
        'path = "../exports/teacher"\nadapter = "peft"\n'
    )
    teacher = decode_file(job_file, TrainingJob).distill_config.teacher.model_spec
    assert teacher is not None
    assert teacher.path == str(tmp_path / "exports" / "teacher")
    assert teacher.adapter == str(tmp_path / "jobs" / "peft")


def test_crucible_train_reports_the_held_out_agreement() -> None:
    from crucible_core.cli.train_cmd import _format_agreement  # pyright: ignore[reportPrivateUsage]

    line = _format_agreement(
        {
            "split": "validation",
            "before": {"token_match": 0.1, "exact_match": 0.0, "examples": 5.0},
            "after": {"token_match": 0.9, "exact_match": 0.6, "examples": 5.0},
        }
    )
    assert line == (
        "teacher    agreement on 5 validation prompts: token_match 0.10 before training -> "
        "0.90 after; exact_match 0.00 before training -> 0.60 after\n"
    )
    resumed = _format_agreement(
        {"split": "validation", "before": None, "after": {"exact_match": 1}}
    )
    assert "before" not in resumed
    assert _format_agreement(None) == ""

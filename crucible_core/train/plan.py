"""``crucible plan``: check a TrainingJob against a backend before anything runs.

Every setting is either supported or refused; nothing is silently ignored or
substituted. :func:`check_capabilities` compares the job with the backend's
declared :class:`~crucible_core.ir.backend.Capabilities` and returns *all*
the problems (field, backend, what it supports instead, a did-you-mean).
:func:`make_plan` adds what will run: the stages, the dataset's rows and
tokens (counted with the run's own tokenizer and chat template, through the
registered ``data.load`` / ``data.tokenize`` stages), the steps, the
checkpoints and their estimated size, and the estimated cost and duration.

Cost comes from ``Capabilities.costs`` (per-million-token training price);
a backend without costs is free (it costs time, not money). Duration comes
from ``Capabilities.throughput_tokens_per_s`` when declared, else from a
measurement: on a free backend the plan times one real ``forward_backward``
on a batch of the job's data. Checkpoint size comes from the backend's
optional ``estimate_checkpoint_bytes(job) -> {"state": n, "sampler": n}``
(not part of the required contract), else it is reported as unknown.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.errors import CrucibleError
from crucible_core.ir.backend import Capabilities, Datum
from crucible_core.ir.experiment import Experiment, StageDef
from crucible_core.ir.training import (
    LOSS_INPUTS,
    LearningConfig,
    LoRA,
    Loss,
    QLoRA,
    TrainingJob,
)
from crucible_core.ir.work import Job
from crucible_core.pipeline.cancel import CancelFlag
from crucible_core.plugins import PluginHost, Registration, get_host
from crucible_core.train import loop as trainloop
from crucible_core.train.prepare import PreparedData, prepare
from crucible_core.train.sampled_eval import SAMPLED_METRICS

__all__ = [
    "MAX_LISTED_CHECKPOINTS",
    "TRAINING_STAGES",
    "VALIDATION_METRICS",
    "CheckpointEstimate",
    "Plan",
    "PlanProblem",
    "Planned",
    "check_capabilities",
    "check_final_export",
    "check_pipeline",
    "final_exports",
    "make_plan",
    "plan_run",
    "training_experiment",
]

#: The stages of a supervised training run, in order: (name, registered stage, depends on).
TRAINING_STAGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("load", "data.load", ()),
    ("tokenize", "data.tokenize", ("load",)),
    ("train", "train.loop", ("tokenize",)),
    ("evaluate", "train.evaluate", ("tokenize", "train")),
    ("save", "train.save", ("train",)),
    ("log_metrics", "train.log_metrics", ("train", "evaluate", "save")),
)


#: The validation metrics a training run computes (``train.evaluate`` and the loop's
#: periodic validation: both are a forward pass over the validation split). Metrics
#: that need sampled generations (accuracy, exact match...) are refused until
#: sampled evaluation exists.
VALIDATION_METRICS: tuple[str, ...] = ("loss", "perplexity", *sorted(SAMPLED_METRICS))

#: What the data stages always put in each Datum's ``loss_fn_inputs``. A stage that
#: provides more declares it when it registers (``register(name, factory,
#: loss_fn_inputs=[...])``, kept in ``Registration.metadata``).
BASE_LOSS_INPUTS: tuple[str, ...] = ("target_tokens", "weights")

#: A plan lists at most this many state checkpoints (the first and last half).
MAX_LISTED_CHECKPOINTS = 20


def training_experiment(job: TrainingJob, job_id: str) -> Experiment:
    """The stage DAG that runs ``job``."""
    return Experiment(
        id=job_id,
        name=f"train {job.model_spec.name}",
        backend=job.backend_ref,
        dataset=job.dataset_spec,
        stages=[
            StageDef(name=name, uses=uses, depends_on=list(deps))
            for name, uses, deps in TRAINING_STAGES
        ],
    )


class PlanProblem(msgspec.Struct, kw_only=True):
    """One setting the backend cannot honour (or one input that cannot be used)."""

    field: str
    message: str
    backend: str = ""
    supported: list[str] = []
    hint: str | None = None


class CheckpointEstimate(msgspec.Struct, kw_only=True):
    """A checkpoint the run is expected to write."""

    step: int
    kind: str = "state"
    size_bytes: int | None = None


class Plan(msgspec.Struct, kw_only=True):
    """What ``crucible plan`` reports (``--json`` prints it as is)."""

    ok: bool
    backend: str
    model: str
    model_path: str | None = None
    dataset: str = ""
    plugin: str | None = None
    problems: list[PlanProblem] = []
    stages: list[str] = []
    rows: int | None = None
    validation_rows: int | None = None
    skipped_rows: int | None = None
    tokens_per_epoch: int | None = None
    template: str | None = None
    tokenizer: str | None = None
    steps: int | None = None
    tokens_to_train: int | None = None
    #: Tokens sampled or scored beside training (RL: the policy's completions, at most
    #: ``rl.max_tokens`` each; distillation: the teacher's completions, the held-out
    #: agreement, on-policy rollouts and the teacher's scoring of them).
    sampling_tokens: int | None = None
    checkpoints: list[CheckpointEstimate] = []
    state_checkpoints: int | None = None
    cost: float | None = None
    currency: str = "USD"
    duration_s: float | None = None
    duration_basis: str | None = None
    notes: list[str] = []


def _refuse(
    problems: list[PlanProblem],
    field: str,
    what: str,
    value: str,
    supported: Sequence[str],
    backend: str,
) -> None:
    close = difflib.get_close_matches(value, list(supported), n=1)
    hint = f"did you mean {close[0]!r}?" if close and close[0] != value else None
    listed = ", ".join(supported) if supported else "none"
    problems.append(
        PlanProblem(
            field=field,
            message=f"backend {backend!r} does not support {what} {value!r}; it supports: {listed}",
            backend=backend,
            supported=list(supported),
            hint=hint,
        )
    )


def final_exports(caps: Capabilities) -> list[str]:
    """The export formats ``checkpoint_policy.format`` may name on this backend: those of
    :data:`~crucible_core.export.FINAL_EXPORT_FORMATS` its metadata lists in
    ``export_formats`` (the final checkpoint is then also exported in that format)."""
    from crucible_core.export import FINAL_EXPORT_FORMATS

    declared = caps.metadata.get("export_formats")
    if not isinstance(declared, list | tuple):
        return []
    listed = {str(f) for f in cast(list[Any], declared)}
    return [f for f in FINAL_EXPORT_FORMATS if f in listed]


def check_final_export(job: TrainingJob, caps: Capabilities, backend: Any) -> list[PlanProblem]:
    """Whether ``backend`` can export this job's model in ``checkpoint_policy.format`` when
    that is an export format (its optional ``check_export(model, fmt, lora=...)`` says
    why not, e.g. gguf of a non-llama architecture); empty when it can or the format is
    an ordinary checkpoint format."""
    fmt = job.checkpoint_policy.format
    if fmt in caps.checkpoint_formats or fmt not in final_exports(caps):
        return []
    check = getattr(backend, "check_export", None)
    if check is not None:
        try:
            check(job.model_spec, fmt, lora=isinstance(job.adapter_config, LoRA | QLoRA))
        except CrucibleError as exc:
            return [
                PlanProblem(
                    field="$.checkpoint_policy.format",
                    message=exc.message,
                    backend=str(caps.backend_id),
                    hint=exc.hint,
                )
            ]
    return []


def check_capabilities(job: TrainingJob, caps: Capabilities, backend: str) -> list[PlanProblem]:
    """Every setting of ``job`` that ``caps`` does not declare, as problems (empty: all fine)."""
    problems: list[PlanProblem] = []
    if not caps.supports_training:
        problems.append(
            PlanProblem(
                field="$.backend",
                message=f"backend {backend!r} does not train (supports_training is false)",
                backend=backend,
                hint="choose a training backend: `crucible plugins --kind backend` lists them",
            )
        )
        return problems
    adapter = job.adapter_config
    model = job.model_spec
    # Declared limits (context, LoRA rank) apply to the backend's own models; a model
    # loaded by path (or a hub id the backend resolves itself, when its capabilities'
    # metadata says ``models_by_hub_id``) carries its own, checked when it is loaded.
    by_hub_id = (
        bool(caps.metadata.get("models_by_hub_id"))
        and model.name not in caps.models
        and "/" in model.name
    )
    by_path = model.path is not None or by_hub_id
    if adapter.__struct_config__.tag not in caps.adapters:
        _refuse(
            problems,
            "$.adapter_config.kind",
            "adapter",
            str(adapter.__struct_config__.tag),
            list(caps.adapters),
            backend,
        )
    if (
        isinstance(adapter, LoRA | QLoRA)
        and caps.max_lora_rank is not None
        and not by_path
        and adapter.rank > caps.max_lora_rank
    ):
        problems.append(
            PlanProblem(
                field="$.adapter_config.rank",
                message=f"backend {backend!r} trains LoRA ranks up to {caps.max_lora_rank}, "
                f"the job asks for {adapter.rank}",
                backend=backend,
                supported=[f"1..{caps.max_lora_rank}"],
                hint=f"set rank to {caps.max_lora_rank} or less",
            )
        )
    cfg = job.learning_config
    if job.workflow == "dpo":
        from crucible_core.train.dpo import dpo_refusal, dpo_route

        if dpo_route(caps) is None:
            problems.append(
                PlanProblem(
                    field="$.workflow",
                    message=dpo_refusal(backend, caps),
                    backend=backend,
                    supported=list(caps.losses),
                    hint='choose a backend that declares the "dpo" loss, or logprobs and '
                    '"importance_sampling"',
                )
            )
    elif job.workflow == "rl":
        from crucible_core.train.rl import rl_refusal

        refusal = rl_refusal(backend, caps, job.rl_config.loss)
        if refusal is not None:
            problems.append(
                PlanProblem(
                    field="$.workflow",
                    message=refusal,
                    backend=backend,
                    supported=list(caps.losses),
                    hint="choose a backend that samples with logprobs and computes rl.loss "
                    "(crucible-local, tinker)",
                )
            )
    elif job.workflow == "distill":
        from crucible_core.train.distill import student_refusal

        why = student_refusal(job, backend, caps.losses, caps.supports_logprobs)
        if why:
            problems.append(
                PlanProblem(
                    field="$.distill.mode",
                    message=why,
                    backend=backend,
                    supported=list(caps.losses),
                    hint='distill.mode = "sft" needs cross_entropy; "on_policy" needs '
                    "importance_sampling and logprobs",
                )
            )
    elif cfg.loss.name not in caps.losses:
        _refuse(
            problems, "$.learning_config.loss.name", "loss", cfg.loss.name, caps.losses, backend
        )
    opt = str(cfg.optimizer.__struct_config__.tag)
    if opt not in caps.optimizers:
        _refuse(
            problems, "$.learning_config.optimizer.name", "optimizer", opt, caps.optimizers, backend
        )
    if cfg.scheduler.name not in caps.schedulers:
        _refuse(
            problems,
            "$.learning_config.scheduler.name",
            "scheduler",
            cfg.scheduler.name,
            caps.schedulers,
            backend,
        )
    fmt = job.checkpoint_policy.format
    if fmt not in caps.checkpoint_formats and fmt not in final_exports(caps):
        _refuse(
            problems,
            "$.checkpoint_policy.format",
            "checkpoint format",
            fmt,
            [*caps.checkpoint_formats, *final_exports(caps)],
            backend,
        )
    if job.checkpoint_policy.push_to_hub and not caps.metadata.get("push_to_hub"):
        problems.append(
            PlanProblem(
                field="$.checkpoint_policy.push_to_hub",
                message=f"backend {backend!r} cannot push checkpoints to a hub",
                backend=backend,
                hint="set push_to_hub = false and publish the run's checkpoint yourself",
            )
        )
    if not by_path and caps.models and model.name not in caps.models:
        _refuse(problems, "$.model_spec.name", "model", model.name, caps.models, backend)
    if model.path is not None and not caps.metadata.get("models_by_path", False):
        problems.append(
            PlanProblem(
                field="$.model_spec.path",
                message=f"backend {backend!r} cannot load a model from a local path",
                backend=backend,
                supported=list(caps.models),
                hint="name one of the backend's models instead",
            )
        )
    limit = None if by_path else caps.max_context_length
    for field, length in (
        ("$.dataset_spec.max_length", job.dataset_spec.max_length),
        ("$.model_spec.max_seq_len", model.max_seq_len),
    ):
        if limit is not None and length is not None and length > limit:
            problems.append(
                PlanProblem(
                    field=field,
                    message=f"sequence length {length} is beyond the context of backend "
                    f"{backend!r} ({limit} tokens)",
                    backend=backend,
                    supported=[f"<= {limit}"],
                    hint=f"set it to {limit} or less",
                )
            )
    return problems


def check_pipeline(
    job: TrainingJob, stages: Mapping[str, Registration], caps: Capabilities | None = None
) -> list[PlanProblem]:
    """What the job asks of the run that no stage of it provides, as problems.

    ``stages`` are the registered stages by name. A validation metric outside
    :data:`VALIDATION_METRICS` is refused, and so is a named loss that reads
    ``loss_fn_inputs`` no training stage declares (``metadata["loss_fn_inputs"]``
    of its registration, beyond :data:`BASE_LOSS_INPUTS`). A loss the backend
    does not support (``caps``) is left to :func:`check_capabilities`.
    """
    problems: list[PlanProblem] = []
    spec = job.validation_spec
    if spec is not None:
        for i, metric in enumerate(spec.metrics):
            if metric in VALIDATION_METRICS:
                continue
            close = difflib.get_close_matches(metric, VALIDATION_METRICS, n=1)
            problems.append(
                PlanProblem(
                    field=f"$.validation_spec.metrics[{i}]",
                    message=f"the run cannot compute the validation metric {metric!r}: it "
                    f"computes {', '.join(VALIDATION_METRICS)}",
                    supported=list(VALIDATION_METRICS),
                    hint=(f"did you mean {close[0]!r}? " if close else "")
                    + "remove it, or score a checkpoint's samples yourself afterwards",
                )
            )
    loss = job.learning_config.loss.name
    if job.workflow in ("dpo", "rl", "distill"):  # their recipes make the loss inputs themselves
        if job.workflow == "rl":
            problems.extend(_check_reward(job))
        return problems
    if caps is not None and loss not in caps.losses:
        return problems
    provided = set(BASE_LOSS_INPUTS)
    for _, uses, _ in TRAINING_STAGES:
        reg = stages.get(uses)
        if reg is not None:
            provided.update(cast(Sequence[str], reg.metadata.get("loss_fn_inputs", ())))
    missing = [name for name in LOSS_INPUTS.get(loss, ()) if name not in provided]
    if missing:
        listed = ", ".join(f"loss_fn_inputs.{m}" for m in missing)
        problems.append(
            PlanProblem(
                field="$.learning_config.loss.name",
                message=f"loss {loss!r} needs {listed}, which no stage of the training run "
                f"provides (they provide: {', '.join(sorted(provided))})",
                supported=[n for n, needs in LOSS_INPUTS.items() if set(needs) <= provided],
                hint='use name = "cross_entropy", or a custom loss (name = "custom", fn = ...) '
                "computed from logprobs",
            )
        )
    return problems


def _check_reward(job: TrainingJob) -> list[PlanProblem]:
    """``rl.reward`` resolved (registered, or importable), else the problem."""
    from crucible_core.train.rewards import resolve_reward

    try:
        resolve_reward(job.rl_config.reward)
    except CrucibleError as exc:
        return [PlanProblem(field="$.rl.reward", message=exc.message, hint=exc.hint)]
    return []


class _PlanContext:
    """A minimal StageContext for running the data stages outside a run."""

    def __init__(
        self, job: Job, experiment: Experiment, backend: Any, inputs: Mapping[str, Any]
    ) -> None:
        self.job_id = job.id
        self.job = job
        self.experiment = experiment
        self.run_dir = Path(".")
        self.options: Mapping[str, Any] = {}
        self.inputs = inputs
        self.cancel = CancelFlag()
        self.artifacts: Any = None
        self._backend = backend

    def backend(self, name: str | None = None) -> Any:
        return self._backend

    def emit(self, kind: str, /, **data: Any) -> None:
        return None


class Planned(msgspec.Struct, kw_only=True):
    """A plan and what making it built, for the run to reuse (``crucible train``)."""

    plan: Plan
    backend: Any = None
    prepared: PreparedData | None = None


def make_plan(
    job: TrainingJob,
    *,
    backend_name: str | None = None,
    host: PluginHost | None = None,
    count_data: bool = True,
    measure: bool = True,
) -> Plan:
    """Check ``job`` and estimate its run; ``plan.ok`` is False when anything would be refused."""
    return plan_run(
        job, backend_name=backend_name, host=host, count_data=count_data, measure=measure
    ).plan


def plan_run(
    job: TrainingJob,
    *,
    backend_name: str | None = None,
    host: PluginHost | None = None,
    count_data: bool = True,
    measure: bool = True,
) -> Planned:
    """:func:`make_plan`, keeping the backend it created and the data it prepared."""
    host = host or get_host()
    ref = job.backend_ref
    name = backend_name or ref.name
    plan = Plan(
        ok=False,
        backend=name,
        model=job.model_spec.name,
        model_path=job.model_spec.path,
        dataset=job.dataset_spec.uri,
    )
    out = Planned(plan=plan)
    try:
        reg = host.get("backend", name)
    except CrucibleError as exc:
        plan.problems.append(PlanProblem(field="$.backend", message=exc.message, hint=exc.hint))
        return out
    plan.plugin = reg.plugin
    from crucible_core.train import distill, dpo, rl, sft

    steps = {"dpo": dpo.STEPS, "rl": rl.STEPS, "distill": distill.STEPS}.get(
        job.workflow, sft.STEPS
    )
    plan.stages = [f"{n} ({uses})" for n, uses in steps]
    caps = reg.capabilities
    # Options can change what a backend declares (a model, prices, throughput): ask
    # the configured instance then; otherwise the static registration answers.
    if caps is None or ref.options:
        try:
            out.backend = reg.create(**ref.options)
            caps = cast(Capabilities, out.backend.capabilities())
        except CrucibleError as exc:
            plan.problems.append(
                PlanProblem(field="$.backend", message=exc.message, backend=name, hint=exc.hint)
            )
            return out
    plan.problems.extend(check_capabilities(job, caps, name))
    policy = job.checkpoint_policy
    if policy.push_to_hub and caps.metadata.get("push_to_hub"):
        import os

        from crucible_core.train.steps import final_export_format

        where = os.environ.get("HF_ENDPOINT") or "the Hugging Face Hub (HF_ENDPOINT unset)"
        plan.notes.append(
            f"push_to_hub: after the run its {final_export_format(job)} export is uploaded to "
            f"{policy.hub_repo} at {where}; this needs network access to it and a token "
            "(HF_TOKEN)"
        )
    fmt = policy.format
    if fmt not in caps.checkpoint_formats and fmt in final_exports(caps):
        try:
            if out.backend is None:
                out.backend = reg.create(**ref.options)
        except CrucibleError as exc:
            plan.problems.append(
                PlanProblem(field="$.backend", message=exc.message, backend=name, hint=exc.hint)
            )
            return out
        found = check_final_export(job, caps, out.backend)
        for problem in found:
            problem.backend = name
        plan.problems.extend(found)
        if not found:
            plan.notes.append(
                f"checkpoint_policy.format = {fmt!r}: checkpoints are written as "
                f"{caps.checkpoint_formats[0] if caps.checkpoint_formats else 'usual'}, and "
                f"the final weights are also exported as {fmt} to <run>/exports/{fmt}"
            )
    plan.problems.extend(check_pipeline(job, host.registrations("stage"), caps))
    if job.workflow == "distill" and not plan.problems:
        if out.backend is None:
            out.backend = reg.create(**ref.options)
        plan.problems.extend(check_teacher(job, host, out.backend))
    for stage in {uses for _, uses, _ in TRAINING_STAGES}:
        if stage not in host.registrations("stage"):
            plan.problems.append(
                PlanProblem(
                    field="$",
                    message=f"no plugin registers the stage {stage!r} a training run needs",
                    hint="install crucible-datasets (data.*) and crucible-core's runtime (train.*)"
                    if stage.startswith("data.")
                    else "reinstall crucible-core",
                )
            )
    if plan.problems or not count_data:
        plan.ok = not plan.problems
        return out
    try:
        if out.backend is None:
            out.backend = reg.create(**ref.options)
        out.prepared = _count(plan, job, host, out.backend)
    except CrucibleError as exc:
        field = getattr(exc, "path", None) or "$.dataset_spec"
        plan.problems.append(PlanProblem(field=field, message=exc.message, hint=exc.hint))
        plan.ok = False
        return out
    _estimate(
        plan, job, caps, out.backend, out.prepared.train, measure=measure, prepared=out.prepared
    )
    plan.ok = not plan.problems
    return out


def _count(plan: Plan, job: TrainingJob, host: PluginHost, backend: Any) -> PreparedData:
    work = Job(id="plan", kind="training_run", payload=msgspec.to_builtins(job))
    experiment = training_experiment(job, "plan")
    data = prepare(
        host, lambda _name, _uses, inputs: _PlanContext(work, experiment, backend, inputs)
    )
    plan.rows = data.train_rows
    plan.validation_rows = data.validation_rows
    plan.skipped_rows = data.skipped
    plan.tokens_per_epoch = sum(len(d.model_input) for d in data.train) or data.tokens
    if job.workflow == "distill":
        plan.tokens_per_epoch = sum(len(p["tokens"]) for p in data.prompts)
    plan.template = data.template
    tokenizer = backend.get_tokenizer(job.model_spec)
    plan.tokenizer = str(getattr(tokenizer, "name", type(tokenizer).__name__))
    return data


def _estimate(
    plan: Plan,
    job: TrainingJob,
    caps: Capabilities,
    backend: Any,
    datums: list[Datum],
    *,
    measure: bool,
    prepared: PreparedData | None = None,
) -> None:
    cfg = job.learning_config
    group = 2 if job.workflow == "dpo" else 1
    sampling = 0
    if job.workflow == "rl" and prepared is not None:
        prompts = prepared.prompts
        total = trainloop.total_steps(cfg, len(prompts))
        tokens = _rl_tokens(job, prompts, total)
        sampling = (
            total
            * cfg.grad_accum
            * cfg.batch_size
            * (job.rl_config.group_size * job.rl_config.max_tokens)
        )
        plan.notes.append(
            f"RL: each step samples {job.rl_config.group_size} completions of "
            f"{cfg.batch_size * cfg.grad_accum} prompts (up to {job.rl_config.max_tokens} tokens "
            "each); the token counts are upper bounds"
        )
    else:
        if job.workflow == "distill":
            datums, sampling = _distill_datums(plan, job, prepared)
        total = trainloop.total_steps(cfg, len(datums) // group)
        tokens = _tokens_to_train(datums, total, cfg, shuffle=job.dataset_spec.shuffle, group=group)
        if job.workflow == "distill" and job.distill_config.mode == "on_policy":
            # Each prompt Datum becomes n sampled sequences, sampled by the student and scored
            # by the teacher before the student trains on them.
            tokens *= job.distill_config.sampling.n
            sampling += 2 * tokens
    plan.steps = total
    plan.tokens_to_train = tokens
    if job.workflow in ("rl", "distill"):
        plan.sampling_tokens = sampling
    if job.budget.max_tokens is not None and tokens > job.budget.max_tokens:
        plan.notes.append(
            f"the run needs {tokens} tokens; budget.max_tokens = {job.budget.max_tokens} "
            "will stop it early (resumable)"
        )
    costs = caps.costs
    plan.currency = costs.currency if costs else "USD"
    plan.cost = tokens * (costs.train_per_mtok if costs else 0.0) / 1e6
    if plan.sampling_tokens:
        plan.cost += plan.sampling_tokens * (costs.sample_per_mtok if costs else 0.0) / 1e6
    if job.budget.max_cost is not None and plan.cost > job.budget.max_cost:
        plan.notes.append(
            f"estimated cost {plan.cost:.4f} {plan.currency} exceeds budget.max_cost "
            f"{job.budget.max_cost}: the run will stop early (resumable)"
        )
    sizes: Mapping[str, int] = {}
    estimator = getattr(backend, "estimate_checkpoint_bytes", None)
    if callable(estimator):
        sizes = cast(Mapping[str, int], estimator(job))
    steps, count = _checkpoint_steps(job, total)
    plan.state_checkpoints = count
    plan.checkpoints = [
        CheckpointEstimate(step=s, kind="state", size_bytes=sizes.get("state")) for s in steps
    ]
    plan.checkpoints.append(
        CheckpointEstimate(step=total, kind="sampler", size_bytes=sizes.get("sampler"))
    )
    policy = job.checkpoint_policy
    if count > len(steps):
        plan.notes.append(
            f"the run writes {count} state checkpoints (every {policy.save_every} steps); "
            f"the plan lists the first and last {MAX_LISTED_CHECKPOINTS // 2}"
        )
    if policy.strategy in ("steps", "last") and count > 1:
        keep = 1 if policy.strategy == "last" else policy.keep_last
        best = " plus the best" if policy.save_best else ""
        plan.notes.append(f"retention keeps the newest {keep} state checkpoint(s){best}")
    rate = caps.throughput_tokens_per_s
    if rate is not None:
        plan.duration_basis = "declared"
    elif measure and (costs is None or costs.train_per_mtok == 0) and datums:
        rate = _measure(job, backend, datums)
        plan.duration_basis = "measured"
    if rate:
        plan.duration_s = tokens / rate
    elif measure:
        plan.notes.append("duration unknown: the backend declares no throughput")


def check_teacher(job: TrainingJob, host: PluginHost, student: Any) -> list[PlanProblem]:
    """Whether ``job``'s distillation teacher exists and can do what its mode asks: a
    teacher that cannot sample (or, on-policy, score) is refused here, not mid-run."""
    from crucible_core.train.teacher import resolve_teacher, teacher_refusal

    field = "$.distill.teacher"
    try:
        teacher = resolve_teacher(job)
    except CrucibleError as exc:
        return [PlanProblem(field=field, message=exc.message, hint=exc.hint)]
    ref, mine = teacher.backend, job.backend_ref
    backend = student
    made = False
    if ref.name != mine.name or dict(ref.options) != dict(mine.options):
        try:
            backend = host.create("backend", ref.name, **ref.options)
            made = True
        except CrucibleError as exc:
            return [
                PlanProblem(
                    field=f"{field}.backend", message=exc.message, backend=ref.name, hint=exc.hint
                )
            ]
    try:
        why = teacher_refusal(backend, ref.name, teacher, job.distill_config.mode)
    finally:
        if made:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
    if why is None:
        return []
    return [
        PlanProblem(
            field=field,
            message=why,
            backend=ref.name,
            hint="name a teacher on a backend that samples (a training backend, or an "
            'inference backend with distill.mode = "sft" and no checkpoint)',
        )
    ]


def _distill_datums(
    plan: Plan, job: TrainingJob, prepared: PreparedData | None
) -> tuple[list[Datum], int]:
    """Stand-ins for the Datums a distillation trains on (each prompt followed by a
    completion of ``sampling.max_tokens``: an upper bound), and the tokens the teacher
    samples (and the held-out agreement scores) before training."""
    from crucible_core.ir.backend import LossFnInputs

    cfg = job.distill_config
    prompts = prepared.prompts if prepared is not None else []
    held_out = (prepared.validation_prompts or prompts[:8]) if prepared is not None else []
    limit = job.dataset_spec.max_length or job.model_spec.max_seq_len
    extra = cfg.sampling.max_tokens
    copies = cfg.sampling.n if cfg.mode == "sft" else 1
    out: list[Datum] = []
    for p in prompts:
        tokens = [int(t) for t in p["tokens"]]
        length = len(tokens) + (extra if cfg.mode == "sft" else 0)
        if limit is not None:
            length = min(length, limit)
        seq = (tokens * (length // max(1, len(tokens)) + 1))[: max(2, length)]
        inputs = LossFnInputs(target_tokens=seq[1:], weights=[1.0] * (len(seq) - 1))
        out.extend([Datum(model_input=seq[:-1], loss_fn_inputs=inputs)] * copies)
    sampling = 0
    if cfg.mode == "sft":
        sampling = sum(copies * (len(p["tokens"]) + extra) for p in prompts)
    # The teacher's greedy answers to the held-out prompts, and the student's before and after.
    sampling += 3 * sum(len(p["tokens"]) + extra for p in held_out)
    plan.notes.append(
        f"distillation: tokens count each completion at distill.sampling.max_tokens = {extra} "
        "(an upper bound)"
    )
    return out, sampling


def _tokens_to_train(
    datums: Sequence[Datum], total: int, cfg: LearningConfig, *, shuffle: bool, group: int = 1
) -> int:
    """Tokens the run feeds, in closed form: O(dataset), whatever ``total`` is.

    Micro-batch ``i`` of the run is batch ``i mod bpe`` of epoch ``i // bpe``
    (:func:`~crucible_core.train.loop.batch_for_step`) and an epoch's
    batches cover every datum once, so whole epochs cost ``tokens_per_epoch``
    each and only the last, partial epoch is walked batch by batch.
    """
    bpe = trainloop.batches_per_epoch(len(datums) // group, cfg.batch_size)
    full_epochs, rest = divmod(total * cfg.grad_accum, bpe)
    tokens = full_epochs * sum(len(d.model_input) for d in datums)
    for k in range(rest):
        index = full_epochs * bpe + k
        step, micro = divmod(index, cfg.grad_accum)
        batch, _ = trainloop.batch_for_step(datums, step, micro, cfg, shuffle=shuffle, group=group)
        tokens += sum(len(d.model_input) for d in batch)
    return tokens


def _rl_tokens(job: TrainingJob, prompts: Sequence[Mapping[str, Any]], total: int) -> int:
    """Tokens an RL run trains on at most: each step's prompts, ``group_size`` times,
    each with a full ``max_tokens`` completion. Walks the steps' prompt indices
    (O(steps x batch)), which is what a run samples anyway."""
    cfg, rl = job.learning_config, job.rl_config
    lengths = [len(cast(Sequence[Any], p["tokens"])) for p in prompts]
    indices = cast(Sequence[Any], list(range(len(prompts))))
    tokens = 0
    for step in range(total):
        for micro in range(cfg.grad_accum):
            chosen, _ = trainloop.batch_for_step(
                indices, step, micro, cfg, shuffle=job.dataset_spec.shuffle
            )
            tokens += sum(
                rl.group_size * (lengths[i] + rl.max_tokens - 1) for i in cast(list[int], chosen)
            )
    return tokens


def _checkpoint_steps(job: TrainingJob, total: int) -> tuple[list[int], int]:
    """The steps whose state the run will write, and how many there are, in closed form.

    Retention then keeps the policy's share. At most :data:`MAX_LISTED_CHECKPOINTS`
    steps are listed (the first and the last half of them), so a run of 2**63
    steps plans as fast as one of 10.
    """
    policy = job.checkpoint_policy
    if not policy.by_steps:
        return [total], 1
    count = policy.save_count(total)
    half = MAX_LISTED_CHECKPOINTS // 2
    if count <= MAX_LISTED_CHECKPOINTS:
        picked: Sequence[int] = range(1, count + 1)
    else:
        picked = [*range(1, half + 1), *range(count - half + 1, count + 1)]
    return [policy.nth_save(k, total) for k in picked], count


def _measure(job: TrainingJob, backend: Any, datums: list[Datum]) -> float:
    """Tokens per second of one real forward_backward on a batch of the job's data."""
    cfg = job.learning_config
    group = 2 if job.workflow == "dpo" else 1
    batch, _ = trainloop.batch_for_step(datums, 0, 0, cfg, group=group)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="crucible-plan-") as scratch:
        return _time_steps(job, backend, batch, Path(scratch))


def _time_steps(job: TrainingJob, backend: Any, batch: list[Datum], scratch: Path) -> float:
    cfg = job.learning_config
    # DPO's pairs carry no reference logprobs yet, a distillation's Datums no teacher
    # completion: time the same tokens with cross_entropy.
    loss = Loss() if job.workflow in ("dpo", "distill") else cfg.loss
    session = backend.create_session(job, run_dir=scratch)
    try:
        session.forward_backward(batch, loss).result(timeout=300)  # warm-up
        start = time.perf_counter()
        session.forward_backward(batch, loss).result(timeout=300)
        session.optim_step(trainloop.adam_params(cfg, cfg.optimizer.lr)).result(timeout=300)
        elapsed = time.perf_counter() - start
    finally:
        session.close()
    return sum(len(d.model_input) for d in batch) / max(elapsed, 1e-9)

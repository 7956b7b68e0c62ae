"""TrainingIR: a training job, declared.

A :class:`TrainingJob` says which model to adapt and how (adapter, optimizer,
schedule, loss), on which data, how to checkpoint and validate, and what it may
spend. Backends read it; ``crucible plan`` checks it against a backend's
declared capabilities before anything runs.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from msgspec import Meta, field

from crucible_core.ir.backend import SamplingParams
from crucible_core.ir.base import (
    SCHEMA_VERSION,
    Identifier,
    IRStruct,
    ModuleRef,
    NonNegativeFloat,
    NonNegativeInt,
    Params,
    PositiveFloat,
    PositiveInt,
    Probability,
    SchemaVersion,
)
from crucible_core.ir.common import BackendRef, ResourceSpec

__all__ = [
    "LOSS_INPUTS",
    "LOSS_NAMES",
    "SGD",
    "AdamW",
    "AdapterConfig",
    "Budget",
    "CheckpointPolicy",
    "DPOConfig",
    "DatasetSpec",
    "DistillConfig",
    "FieldMap",
    "Full",
    "LearningConfig",
    "LoRA",
    "Loss",
    "ModelSpec",
    "Optimizer",
    "QLoRA",
    "RLConfig",
    "ResourceSpec",
    "Scheduler",
    "TeacherSpec",
    "TrainingJob",
    "ValidationSpec",
    "Workflow",
]

LossName = Literal[
    "cross_entropy", "importance_sampling", "ppo", "cispo", "gspo", "dro", "dpo", "custom"
]
#: The named losses a backend may declare in ``Capabilities.losses``.
LOSS_NAMES: tuple[str, ...] = (
    "cross_entropy",
    "importance_sampling",
    "ppo",
    "cispo",
    "gspo",
    "dro",
    "dpo",
)
#: The ``LossFnInputs`` fields each named loss reads beyond ``target_tokens``/``weights``.
LOSS_INPUTS: dict[str, tuple[str, ...]] = {
    "cross_entropy": (),
    "importance_sampling": ("logprobs", "advantages"),
    "ppo": ("logprobs", "advantages"),
    "cispo": ("logprobs", "advantages"),
    "gspo": ("logprobs", "advantages", "sequence_ratio_mask"),
    "dro": ("logprobs", "advantages"),
    "dpo": ("ref_logprobs",),
}


class ModelSpec(IRStruct, frozen=True, kw_only=True):
    """The base model: a name a backend knows, or a path to a model directory on disk.

    ``adapter`` is a PEFT adapter directory (``adapter_config.json`` + weights,
    e.g. a ``crucible export --format peft`` or any outside adapter) to start
    training from instead of a fresh LoRA: its own rank and target modules apply.
    """

    name: Annotated[str, Meta(min_length=1)]
    path: str | None = None
    adapter: str | None = None
    revision: str | None = None
    tokenizer: str | None = None
    max_seq_len: PositiveInt | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    options: Params = {}


class LoRA(IRStruct, frozen=True, kw_only=True, tag="lora", tag_field="kind"):
    """Low-rank adapters on the named modules; the base weights stay frozen."""

    rank: PositiveInt = 16
    alpha: PositiveFloat = 32.0
    dropout: Probability = 0.05
    target_modules: Annotated[list[str], Meta(min_length=1)] = field(
        default_factory=lambda: ["q_proj", "v_proj"]
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = False


class QLoRA(LoRA, frozen=True, kw_only=True, tag="qlora", tag_field="kind"):
    """LoRA over a base model quantised to ``bits``."""

    bits: Literal[4, 8] = 4


class Full(IRStruct, frozen=True, kw_only=True, tag="full", tag_field="kind"):
    """Full fine-tuning: every weight is trained."""


AdapterConfig = LoRA | QLoRA | Full


class AdamW(IRStruct, frozen=True, kw_only=True, tag="adamw", tag_field="name"):
    """AdamW with decoupled weight decay; ``grad_clip`` is a max global gradient norm."""

    lr: PositiveFloat = 1e-4
    betas: tuple[Probability, Probability] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0
    grad_clip: PositiveFloat | None = 1.0


class SGD(IRStruct, frozen=True, kw_only=True, tag="sgd", tag_field="name"):
    """Plain SGD with optional momentum."""

    lr: PositiveFloat = 1e-2
    momentum: Probability = 0.0
    weight_decay: NonNegativeFloat = 0.0
    grad_clip: PositiveFloat | None = None


Optimizer = AdamW | SGD


class Scheduler(IRStruct, frozen=True, kw_only=True):
    """Learning-rate schedule: linear warmup for ``warmup_steps``, then constant/linear/cosine."""

    name: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: NonNegativeInt = 0
    min_lr_ratio: Annotated[float, Meta(ge=0, le=1)] = 0.0

    def multiplier(self, step: int, total_steps: int | None) -> float:
        """The factor applied to the base rate at optimizer step ``step`` (0-based).

        The one copy of the rule (the training loop and any backend that schedules
        itself use it). Warmup: steps ``0 .. warmup_steps - 1`` get
        ``(step + 1) / warmup_steps``. Then ``constant`` stays at 1; ``linear`` falls
        to ``min_lr_ratio`` and ``cosine`` follows half a cosine down to it, both
        reaching it at ``total_steps`` and staying there. A decaying schedule needs
        ``total_steps`` (``ValueError`` without it).
        """
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.name == "constant":
            return 1.0
        if total_steps is None:
            raise ValueError(f"scheduler {self.name!r} needs the total number of steps")
        progress = min(1.0, (step - self.warmup_steps) / max(1, total_steps - self.warmup_steps))
        floor = self.min_lr_ratio
        if self.name == "linear":
            return 1.0 - (1.0 - floor) * progress
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Loss(IRStruct, frozen=True, kw_only=True):
    """The loss: a named one the backend computes, or ``custom`` computed from logprobs.

    A custom loss names a function ``fn = "package.module:attr"`` with the
    signature ``fn(data, logprobs, **params) -> (loss, metrics)``, where
    ``logprobs`` are per-datum tensors of target-token log-probabilities.
    """

    name: LossName = "cross_entropy"
    fn: ModuleRef | None = None
    params: Params = {}

    def __post_init__(self) -> None:
        if self.name == "custom" and self.fn is None:
            raise ValueError('a custom loss needs `fn = "package.module:function"`')
        if self.name != "custom" and self.fn is not None:
            raise ValueError(f'`fn` is only used with name = "custom", not {self.name!r}')


class LearningConfig(IRStruct, frozen=True, kw_only=True):
    """How to learn: optimizer, schedule, batch geometry, length and loss."""

    optimizer: Optimizer = AdamW()
    scheduler: Scheduler = Scheduler()
    batch_size: PositiveInt = 4
    grad_accum: PositiveInt = 1
    max_steps: PositiveInt | None = 1000
    epochs: PositiveInt | None = None
    seed: NonNegativeInt = 0
    loss: Loss = Loss()

    def __post_init__(self) -> None:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set `max_steps` or `epochs` (or both): a run needs an end")


class FieldMap(IRStruct, frozen=True, kw_only=True):
    """Which source columns play which role. Unused roles are ignored."""

    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"
    text: str = "text"
    label: str = "label"
    chosen: str = "chosen"
    rejected: str = "rejected"


class DatasetSpec(IRStruct, frozen=True, kw_only=True):
    """Where the data is and how to read it.

    ``uri`` selects the source by scheme or suffix (``path/to/file.jsonl``,
    ``csv:...``, ``parquet:...``, ``hf-disk:...``, ``sample:chat``).
    """

    uri: Annotated[str, Meta(min_length=1)]
    format: str | None = None
    split: str | None = None
    fields: FieldMap = FieldMap()
    template: str | None = None
    train_on: Literal["assistant", "all"] = "assistant"
    max_length: PositiveInt | None = None
    packing: bool = False
    shuffle: bool = True
    limit: PositiveInt | None = None
    validation_ratio: Annotated[float, Meta(ge=0, lt=1)] = 0.0
    on_error: Literal["raise", "skip"] = "raise"
    options: Params = {}


class CheckpointPolicy(IRStruct, frozen=True, kw_only=True):
    """When to save, how many to keep, which is best, and in what format."""

    strategy: Literal["steps", "epoch", "best", "last", "all"] = "steps"
    save_every: PositiveInt = 100
    keep_last: PositiveInt = 5
    save_best: bool = True
    best_metric: Annotated[str, Meta(min_length=1)] = "loss"
    best_mode: Literal["min", "max"] = "min"
    format: Literal["safetensors", "pytorch", "gguf", "onnx"] = "safetensors"
    push_to_hub: bool = False
    hub_repo: str | None = None

    def __post_init__(self) -> None:
        if self.push_to_hub and not self.hub_repo:
            raise ValueError("push_to_hub = true needs `hub_repo`")

    # The one copy of the step cadence: the loop asks saves_at, the checkpoint engine
    # asks it too, and the plan counts the same saves in closed form.

    @property
    def by_steps(self) -> bool:
        """Whether saves follow the step cadence (``steps``, ``last``, ``all``)."""
        return self.strategy in ("steps", "last", "all")

    def saves_at(self, step: int, total: int | None = None) -> bool:
        """Whether the state after ``step`` (1-based count of steps done) is saved by the
        step cadence: every ``save_every`` steps, and the last step of ``total``."""
        return self.by_steps and step > 0 and (step % self.save_every == 0 or step == total)

    def save_count(self, total: int) -> int:
        """How many states a run of ``total`` steps saves by the step cadence."""
        return -(-total // self.save_every) if self.by_steps and total > 0 else 0

    def nth_save(self, k: int, total: int) -> int:
        """The step of the ``k``-th save (1-based) of a run of ``total`` steps."""
        return min(k * self.save_every, total)


class ValidationSpec(IRStruct, frozen=True, kw_only=True):
    """Evaluation during training, and early stopping on it."""

    every_n_steps: PositiveInt | None = None
    split: str = "validation"
    metrics: list[str] = field(default_factory=lambda: ["loss"])
    max_samples: PositiveInt | None = None
    early_stopping_patience: PositiveInt | None = None


class Budget(IRStruct, frozen=True, kw_only=True):
    """Limits a run stops at, cleanly (checkpoint first). Unset means unlimited."""

    max_cost: NonNegativeFloat | None = None
    max_tokens: PositiveInt | None = None
    max_wall_time: PositiveFloat | None = None


Workflow = Literal["sft", "dpo", "rl", "distill"]


class DPOConfig(IRStruct, frozen=True, kw_only=True):
    """Direct preference optimisation (``workflow = "dpo"``): its strength and its reference.

    ``beta`` scales the implicit reward ``beta * (log p - log p_ref)`` of each
    side of a (chosen, rejected) pair. ``reference`` is the frozen model whose
    log-probabilities the policy is measured against: ``"base"`` (the job's
    base model, before any step) or the URI of a state checkpoint (a
    ``CheckpointRef.uri`` of the same backend, e.g. an earlier SFT run's).
    """

    beta: PositiveFloat = 0.1
    reference: Annotated[str, Meta(min_length=1)] = "base"


class RLConfig(IRStruct, frozen=True, kw_only=True):
    """Reinforcement learning, GRPO-style (``workflow = "rl"``): how to sample, score and learn.

    Each step takes ``learning_config.batch_size`` prompts, samples
    ``group_size`` completions of each (at most ``max_tokens`` tokens, at
    ``temperature``) from the policy's sampler, scores each with ``reward``
    (a registered reward, e.g. ``"gsm8k"`` or ``"exact_match"``, or
    ``"package.module:function"``), and trains with the group-relative
    advantage ``reward - mean(group's rewards)`` (divided by the group's
    standard deviation with ``scale_advantages``) under the ``loss``
    (``importance_sampling``; or ``ppo``, ``cispo`` or ``gspo``, each clipping
    its ratio at ``1 +- clip_epsilon``; gspo's sequence ratio is taken over the
    completion's tokens).

    The sampler's weights are refreshed every ``refresh_every`` steps; a
    sample may come from weights at most ``max_off_policy_steps`` steps older
    than the step that trains on it (0: strictly on-policy, sampling waits for
    each step). With ``max_off_policy_steps >= 1`` the next step's samples are
    drawn while the current step trains, so ``refresh_every`` may be at most
    ``max(1, max_off_policy_steps)``. ``kl_coef`` subtracts ``kl_coef`` times
    each sample's log-ratio to the reference (the base model) from its reward;
    ``report_kl`` reports that KL per step (it costs a forward pass of the
    reference per step; it is always computed when ``kl_coef > 0``).
    """

    reward: Annotated[str, Meta(min_length=1)] = "exact_match"
    group_size: Annotated[int, Meta(ge=2, le=128)] = 4
    max_tokens: PositiveInt = 32
    temperature: PositiveFloat = 1.0
    loss: Literal["importance_sampling", "ppo", "cispo", "gspo"] = "importance_sampling"
    clip_epsilon: Annotated[float, Meta(gt=0, lt=1)] = 0.2
    refresh_every: PositiveInt = 1
    max_off_policy_steps: NonNegativeInt = 0
    scale_advantages: bool = False
    kl_coef: NonNegativeFloat = 0.0
    report_kl: bool = True

    def __post_init__(self) -> None:
        most = max(1, self.max_off_policy_steps)
        if self.refresh_every > most:
            raise ValueError(
                f"rl.refresh_every = {self.refresh_every} would train on samples more than "
                f"max_off_policy_steps = {self.max_off_policy_steps} steps old: set "
                f"refresh_every to {most} or less, or raise max_off_policy_steps"
            )

    @property
    def lag(self) -> int:
        """Steps between the weights a step's samples come from and the step, at least:
        1 when sampling overlaps training (``max_off_policy_steps >= 1``), else 0."""
        return 1 if self.max_off_policy_steps >= 1 else 0

    def version_for(self, step: int) -> int:
        """The weight version (optimizer steps done) step ``step`` (0-based) samples from."""
        return max(0, (step - self.lag) // self.refresh_every * self.refresh_every)


class TeacherSpec(IRStruct, frozen=True, kw_only=True):
    """The model a distillation student learns from: any registered backend that samples.

    Three ways to name it (``run`` excludes ``backend``/``model_spec``/``checkpoint``).
    ``run``: a finished training run (id or directory), meaning its backend, its
    base model and its newest state checkpoint (the weights it ended with).
    ``backend`` and/or ``model_spec``: a base model (unset: the student's backend
    and base model), optionally at ``checkpoint``, the URI of a state checkpoint
    of that backend (a ``CheckpointRef.uri``, as ``dpo.reference``). An exported
    model: ``model_spec.path`` (a full Hugging Face directory) or
    ``model_spec.adapter`` (a PEFT adapter directory over ``model_spec.name``).

    A training backend samples through a session of the teacher's weights
    (``save_weights_for_sampler``) and scores through the same session's
    ``forward``; an inference-only backend samples with ``complete`` (mode
    ``"sft"`` only, no checkpoint).
    """

    run: Annotated[str, Meta(min_length=1)] | None = None
    backend: Annotated[str, Meta(min_length=1)] | BackendRef | None = None
    model_spec: ModelSpec | None = None
    checkpoint: Annotated[str, Meta(min_length=1)] | None = None

    def __post_init__(self) -> None:
        if self.run is not None:
            given = [
                n for n in ("backend", "model_spec", "checkpoint") if getattr(self, n) is not None
            ]
            if given:
                raise ValueError(
                    f"`run` names the teacher's backend, model and weights; drop "
                    f"{', '.join(given)} (or drop `run` and name them yourself)"
                )


class DistillConfig(IRStruct, frozen=True, kw_only=True):
    """Distillation (``workflow = "distill"``): the teacher, the mode, the teacher's sampling.

    ``mode = "sft"``: the teacher completes every prompt of the dataset
    (``sampling``; cached by teacher identity and dataset hash) and the student
    trains on those completions with cross entropy. ``mode = "on_policy"``: each
    step the student samples ``sampling.n`` completions per prompt from its current
    weights, the teacher scores them (its log-probabilities of the student's
    tokens), and the student follows the per-token reverse KL
    ``log p_teacher - log p_student`` as the advantage of the ``importance_sampling``
    loss; teacher and student must share a tokenizer and the teacher must be a
    training backend (it computes logprobs with ``forward``).

    ``sampling.seed`` unset: each prompt is sampled with ``learning_config.seed``
    plus its index, so a run (and its resume) samples the same completions.
    """

    teacher: TeacherSpec = TeacherSpec()
    mode: Literal["sft", "on_policy"] = "sft"
    sampling: SamplingParams = SamplingParams(max_tokens=64, temperature=1.0)


class TrainingJob(IRStruct, frozen=True, kw_only=True):
    """A training run, fully declared. The top-level TrainingIR message.

    ``workflow`` picks the recipe: ``"sft"`` (supervised, the loss of
    ``learning_config.loss``), ``"dpo"`` (preference pairs, the DPO loss
    with ``dpo``'s settings; ``learning_config.loss`` stays unset or names
    ``dpo``), ``"rl"`` (sampled completions scored by a reward, with
    ``rl``'s settings; ``learning_config.loss`` stays unset, ``rl.loss``
    names the loss) or ``"distill"`` (a teacher's completions or
    log-probabilities, with ``distill``'s settings; ``learning_config.loss``
    stays unset).
    """

    schema_version: SchemaVersion = SCHEMA_VERSION
    job_id: Identifier | None = None
    backend: Annotated[str, Meta(min_length=1)] | BackendRef = "local"
    model_spec: ModelSpec
    adapter_config: AdapterConfig = LoRA()
    learning_config: LearningConfig = LearningConfig()
    dataset_spec: DatasetSpec
    checkpoint_policy: CheckpointPolicy = CheckpointPolicy()
    validation_spec: ValidationSpec | None = None
    resource_spec: ResourceSpec = ResourceSpec()
    budget: Budget = Budget()
    workflow: Workflow = "sft"
    dpo: DPOConfig | None = None
    rl: RLConfig | None = None
    distill: DistillConfig | None = None
    metadata: Params = {}

    def __post_init__(self) -> None:
        if self.workflow != "dpo" and self.dpo is not None:
            raise ValueError('`dpo` settings are only used with workflow = "dpo"')
        loss = self.learning_config.loss
        if self.workflow == "dpo" and loss != Loss() and loss.name != "dpo":
            raise ValueError(
                'workflow = "dpo" trains with the DPO loss: leave learning_config.loss unset '
                f"(it says {loss.name!r}) and set dpo.beta instead"
            )
        if self.workflow != "rl" and self.rl is not None:
            raise ValueError('`rl` settings are only used with workflow = "rl"')
        if self.workflow == "rl" and loss != Loss() and loss.name != self.rl_config.loss:
            raise ValueError(
                'workflow = "rl" trains with rl.loss ("importance_sampling", "ppo", "cispo" or '
                f'"gspo"): leave learning_config.loss unset (it says {loss.name!r}) and set '
                "rl.loss instead"
            )
        if self.workflow != "distill" and self.distill is not None:
            raise ValueError('`distill` settings are only used with workflow = "distill"')
        on_policy = self.distill_config.mode == "on_policy"
        own: LossName = "importance_sampling" if on_policy else "cross_entropy"
        if self.workflow == "distill" and loss not in (Loss(), Loss(name=own)):
            raise ValueError(
                'workflow = "distill" picks its loss from distill.mode (cross_entropy for '
                f'"sft", importance_sampling for "on_policy"): leave learning_config.loss unset '
                f"(it says {loss.name!r})"
            )
        if self.workflow == "distill" and self.distill_config.mode == "on_policy":
            teacher = self.distill_config.teacher
            if teacher.model_spec is not None and (
                teacher.model_spec.tokenizer or teacher.model_spec.name
            ) != (self.model_spec.tokenizer or self.model_spec.name):
                raise ValueError(
                    'distill.mode = "on_policy" compares teacher and student token by token: '
                    "distill.teacher.model_spec must use the student's tokenizer (set "
                    "model_spec.tokenizer on both, or use the same base model)"
                )

    @property
    def dpo_config(self) -> DPOConfig:
        """``dpo`` or its defaults (a DPO job need not spell them out)."""
        return self.dpo if self.dpo is not None else DPOConfig()

    @property
    def rl_config(self) -> RLConfig:
        """``rl`` or its defaults (an RL job need not spell them out)."""
        return self.rl if self.rl is not None else RLConfig()

    @property
    def distill_config(self) -> DistillConfig:
        """``distill`` or its defaults (the teacher: the student's own base model)."""
        return self.distill if self.distill is not None else DistillConfig()

    @property
    def backend_ref(self) -> BackendRef:
        """``backend`` as a :class:`BackendRef` whichever form the file used."""
        if isinstance(self.backend, str):
            return BackendRef(name=self.backend)
        return self.backend

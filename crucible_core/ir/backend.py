"""Backend IR: what crosses the inference and training contracts.

Inference: a :class:`Prompt` and :class:`SamplingParams` in, a
:class:`Completion` (or a stream of :class:`StreamChunk`) out, and the
:class:`Capabilities` a backend declares. Training: :class:`Datum` batches in,
:class:`ForwardBackwardResult` / :class:`OptimStepResult` out, and
:class:`CheckpointRef` for saved state. Field names follow the Tinker API so
that the same loop runs on every backend.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta

from crucible_core.ir.base import (
    SCHEMA_VERSION,
    FiniteFloat,
    IRStruct,
    NonNegativeFloat,
    NonNegativeInt,
    Params,
    PositiveFloat,
    PositiveInt,
    Probability,
    SchemaVersion,
)

__all__ = [
    "AdamParams",
    "Capabilities",
    "CheckpointRef",
    "Completion",
    "Costs",
    "Datum",
    "ForwardBackwardResult",
    "Health",
    "LossFnInputs",
    "Message",
    "OptimStepResult",
    "Prompt",
    "SamplingParams",
    "StreamChunk",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "error", "cancelled"]
AdapterKind = Literal["lora", "qlora", "full"]


class Message(IRStruct, frozen=True, kw_only=True):
    """One chat message."""

    role: Role
    content: str
    name: str | None = None


class Prompt(IRStruct, frozen=True, kw_only=True):
    """What to complete: chat ``messages``, plain ``text``, or ``tokens`` (exactly one)."""

    messages: list[Message] | None = None
    text: str | None = None
    tokens: list[NonNegativeInt] | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("messages", "text", "tokens") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "a prompt has exactly one of `messages`, `text` or `tokens`"
                + (f"; got {', '.join(given)}" if given else "; got none")
            )


class SamplingParams(IRStruct, frozen=True, kw_only=True):
    """How to sample. ``temperature = 0`` is greedy; ``n`` completions per prompt."""

    max_tokens: PositiveInt = 256
    temperature: NonNegativeFloat = 1.0
    top_p: Annotated[float, Meta(gt=0, le=1)] = 1.0
    top_k: PositiveInt | None = None
    stop: list[str] = []
    seed: NonNegativeInt | None = None
    n: Annotated[int, Meta(ge=1, le=128)] = 1


class Usage(IRStruct, frozen=True, kw_only=True):
    """Token counts of one request."""

    prompt_tokens: NonNegativeInt = 0
    completion_tokens: NonNegativeInt = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Completion(IRStruct, frozen=True, kw_only=True):
    """One generated sequence."""

    schema_version: SchemaVersion = SCHEMA_VERSION
    text: str
    tokens: list[int] = []
    logprobs: list[FiniteFloat] | None = None
    finish_reason: FinishReason = "stop"
    usage: Usage = Usage()
    latency_ms: NonNegativeFloat = 0.0
    backend_id: str = ""
    model: str | None = None


class StreamChunk(IRStruct, frozen=True, kw_only=True):
    """An increment of a streamed completion; the last one has ``finish_reason`` set."""

    index: NonNegativeInt = 0
    text: str = ""
    tokens: list[int] = []
    logprobs: list[FiniteFloat] | None = None
    finish_reason: FinishReason | None = None
    backend_id: str = ""


class Costs(IRStruct, frozen=True, kw_only=True):
    """Declared prices per million tokens (0 means free; the local backend costs time only)."""

    currency: str = "USD"
    train_per_mtok: NonNegativeFloat = 0.0
    prompt_per_mtok: NonNegativeFloat = 0.0
    sample_per_mtok: NonNegativeFloat = 0.0
    storage_per_gb_month: NonNegativeFloat = 0.0


class Capabilities(IRStruct, frozen=True, kw_only=True):
    """What a backend can do. ``crucible plan`` refuses any setting outside it.

    An empty list means "none" except for ``models``, where it means "any model
    the backend can load by path".
    """

    schema_version: SchemaVersion = SCHEMA_VERSION
    backend_id: str
    provider: str = ""
    models: list[str] = []
    supports_streaming: bool = False
    supports_tools: bool = False
    supports_vision: bool = False
    supports_training: bool = False
    supports_logprobs: bool = False
    supports_inference: bool = True
    losses: list[str] = []
    adapters: list[AdapterKind] = []
    optimizers: list[str] = []
    schedulers: list[str] = []
    checkpoint_formats: list[str] = []
    max_context_length: PositiveInt | None = None
    max_lora_rank: PositiveInt | None = None
    costs: Costs | None = None
    throughput_tokens_per_s: PositiveFloat | None = None
    metadata: Params = {}


class Health(IRStruct, frozen=True, kw_only=True):
    """Result of a health check."""

    ok: bool
    detail: str = ""
    latency_ms: NonNegativeFloat = 0.0


class LossFnInputs(IRStruct, frozen=True, kw_only=True):
    """Per-token inputs of a loss, each as long as the datum's ``model_input``.

    ``target_tokens`` are the tokens to score (usually the input shifted by
    one); ``weights`` scale each token's loss (0 masks it out);
    ``advantages`` and ``logprobs`` (the sampler's logprobs) feed
    importance_sampling, ppo, cispo, gspo and dro; ``sequence_ratio_mask`` marks
    (non-zero) the tokens gspo averages its sequence ratio over; ``ref_logprobs``
    feeds dpo.
    """

    target_tokens: list[NonNegativeInt]
    weights: list[FiniteFloat] | None = None
    advantages: list[FiniteFloat] | None = None
    logprobs: list[FiniteFloat] | None = None
    ref_logprobs: list[FiniteFloat] | None = None
    sequence_ratio_mask: list[FiniteFloat] | None = None


class Datum(IRStruct, frozen=True, kw_only=True):
    """One training example: input tokens and the loss inputs for them."""

    model_input: Annotated[list[NonNegativeInt], Meta(min_length=1)]
    loss_fn_inputs: LossFnInputs

    def __post_init__(self) -> None:
        n = len(self.model_input)
        inputs = self.loss_fn_inputs
        for name in (
            "target_tokens",
            "weights",
            "advantages",
            "logprobs",
            "ref_logprobs",
            "sequence_ratio_mask",
        ):
            value = getattr(inputs, name)
            if value is not None and len(value) != n:
                raise ValueError(
                    f"loss_fn_inputs.{name} has {len(value)} entries; model_input has {n}"
                )

    @property
    def num_tokens(self) -> int:
        return len(self.model_input)


class AdamParams(IRStruct, frozen=True, kw_only=True):
    """The optimizer step's parameters (Tinker's AdamParams)."""

    learning_rate: PositiveFloat = 1e-4
    beta1: Probability = 0.9
    beta2: Probability = 0.999
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0
    grad_clip_norm: NonNegativeFloat = 0.0


class ForwardBackwardResult(IRStruct, frozen=True, kw_only=True):
    """What a forward(-backward) pass returns.

    ``loss`` is the weighted mean over the batch's loss tokens (``metrics``
    carries the sum as ``loss:sum``); ``logprobs`` holds one list of
    target-token log-probabilities per datum.
    """

    loss: FiniteFloat
    metrics: dict[str, FiniteFloat] = {}
    logprobs: list[list[FiniteFloat]] = []
    num_tokens: NonNegativeInt = 0


class OptimStepResult(IRStruct, frozen=True, kw_only=True):
    """What an optimizer step returns: the step now reached and the rate used."""

    step: NonNegativeInt
    learning_rate: NonNegativeFloat = 0.0
    grad_norm: FiniteFloat | None = None
    metrics: dict[str, FiniteFloat] = {}


class CheckpointRef(IRStruct, frozen=True, kw_only=True):
    """A saved checkpoint: ``state`` (weights + optimizer, resumable) or ``sampler`` (weights)."""

    schema_version: SchemaVersion = SCHEMA_VERSION
    uri: Annotated[str, Meta(min_length=1)]
    kind: Literal["state", "sampler"] = "state"
    step: NonNegativeInt = 0
    backend_id: str = ""
    name: str = ""
    created_at: datetime | None = None
    metadata: Params = {}

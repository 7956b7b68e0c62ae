"""JSON request bodies of the tinker protocol, as msgspec request Structs.

JSON request bodies are decoded with msgspec into the request Structs below
(:func:`decode_request`): a body that is not JSON, not an object, nested too
deeply, or whose fields have the wrong type or size raises
:class:`~crucible_core.errors.ValidationError` naming the field
(``$.base_model: ...``), and the HTTP layer answers 400. Fields the server
does not use are not declared and are ignored (the SDK sends more than it
needs, and newer SDKs may add fields).

The protobuf payloads (``forward_backward`` requests, results and samples)
are in :mod:`~crucible_tinker.server.payloads`; this module imports neither
numpy nor tinker.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from crucible_core.errors import ValidationError
from crucible_core.ir import decode

__all__ = [
    "MAX_NAME_LENGTH",
    "AdamParamsBody",
    "BodyTooLarge",
    "CreateModelRequest",
    "CreateSamplingSessionRequest",
    "EmptyRequest",
    "LoadWeightsRequest",
    "LoraConfigBody",
    "ModelRequest",
    "OptimStepRequest",
    "OptimizerConfigBody",
    "PromptBody",
    "PromptChunk",
    "RequestIdRequest",
    "SampleRequest",
    "SamplingParamsBody",
    "SaveWeightsExternalRequest",
    "SaveWeightsForSamplerRequest",
    "SaveWeightsRequest",
    "SessionRequest",
    "WireRequest",
    "decode_request",
]

R = TypeVar("R", bound="WireRequest")

#: The longest model name or checkpoint path accepted (a base model may be a local path).
MAX_NAME_LENGTH = 1024
#: The longest id accepted (server-made ids are far shorter).
MAX_ID_LENGTH = 512

Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
#: Sequence numbers: sampling clients offset theirs by 1e9 per clone.
SeqId = Annotated[int, Meta(ge=0, le=2**62)]
TokenId = Annotated[int, Meta(ge=0, lt=2**31)]
Rank = Annotated[int, Meta(ge=1)]
Small = Annotated[int, Meta(ge=-(2**31), lt=2**31)]


class BodyTooLarge(ValidationError):
    """A request body (or its decompressed form) is bigger than the server accepts (413)."""


class WireRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the JSON request bodies: undeclared fields are ignored."""


class EmptyRequest(WireRequest, frozen=True, kw_only=True):
    """A body whose content the server does not use; it must still be a JSON object."""


class SessionRequest(WireRequest, frozen=True, kw_only=True):
    """``session_heartbeat``."""

    session_id: Id


class ModelRequest(WireRequest, frozen=True, kw_only=True):
    """``get_info``."""

    model_id: Id


class RequestIdRequest(WireRequest, frozen=True, kw_only=True):
    """``retrieve_future`` and ``cancel_future``."""

    request_id: Id
    allow_metadata_only: bool = False


class LoraConfigBody(WireRequest, frozen=True, kw_only=True):
    rank: Rank = 32
    seed: int | None = None
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = True


class OptimizerConfigBody(WireRequest, frozen=True, kw_only=True):
    type: Annotated[str, Meta(max_length=64)] = "adamw"


class CreateModelRequest(WireRequest, frozen=True, kw_only=True):
    session_id: Id
    model_seq_id: SeqId
    base_model: Name
    lora_config: LoraConfigBody | None = None
    optimizer_config: OptimizerConfigBody | None = None


class AdamParamsBody(WireRequest, frozen=True, kw_only=True):
    learning_rate: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    weight_decay: float | None = None
    grad_clip_norm: float | None = None

    def given(self) -> dict[str, float]:
        """The parameters the client set (crucible's AdamParams defaults fill the rest)."""
        return {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not None}


class OptimStepRequest(WireRequest, frozen=True, kw_only=True):
    model_id: Id
    seq_id: SeqId | None = None
    adam_params: AdamParamsBody | None = None


class SaveWeightsRequest(WireRequest, frozen=True, kw_only=True):
    model_id: Id
    seq_id: SeqId | None = None
    path: Name | None = None
    overwrite: bool = False


class SaveWeightsForSamplerRequest(WireRequest, frozen=True, kw_only=True):
    model_id: Id
    seq_id: SeqId | None = None
    path: Name | None = None
    sampling_session_seq_id: SeqId | None = None


class SaveWeightsExternalRequest(WireRequest, frozen=True, kw_only=True):
    """``save_weights_external``: the weights as files other tools load (a PEFT adapter
    directory for a LoRA model), downloadable through ``external_weights_urls``."""

    model_id: Id
    path: Name
    seq_id: SeqId | None = None
    ttl_seconds: int | None = None
    age_encryption_recipients: list[str] | None = None


class LoadWeightsRequest(WireRequest, frozen=True, kw_only=True):
    """Into a model (``model_id`` + ``seq_id``), or creating one (``session_id`` + ...)."""

    path: Name
    model_id: Id | None = None
    seq_id: SeqId | None = None
    session_id: Id | None = None
    model_seq_id: SeqId | None = None
    base_model: Name | None = None


class CreateSamplingSessionRequest(WireRequest, frozen=True, kw_only=True):
    session_id: Id
    sampling_session_seq_id: SeqId
    base_model: Name | None = None
    model_path: Name | None = None


class PromptChunk(WireRequest, frozen=True, kw_only=True):
    """One chunk of a ModelInput; only ``encoded_text`` chunks carry ``tokens``."""

    type: Annotated[str, Meta(max_length=64)] = "encoded_text"
    tokens: list[TokenId] = []


class PromptBody(WireRequest, frozen=True, kw_only=True):
    chunks: list[PromptChunk]


class SamplingParamsBody(WireRequest, frozen=True, kw_only=True):
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: Small | None = None
    seed: int | None = None
    #: A string, strings, or stop token ids.
    stop: str | list[str | TokenId] | None = None


class SampleRequest(WireRequest, frozen=True, kw_only=True):
    sampling_session_id: Id
    prompt: PromptBody
    seq_id: SeqId = 0
    num_samples: Annotated[int, Meta(ge=1, le=128)] = 1
    sampling_params: SamplingParamsBody | None = None
    prompt_logprobs: bool | None = None
    #: Score only the last N prompt tokens (``SamplingClient.compute_logprobs``).
    prompt_logprobs_last_n: Annotated[int, Meta(ge=0)] | None = None
    topk_prompt_logprobs: Small = 0
    topk_sample_logprobs: Small = 0
    prompt_alt_tokens_k: Small = 0
    #: Declared only to refuse it: a tensor the server does not read.
    target_prompt_logprobs: dict[str, Any] | None = None


def decode_request(body: bytes, type: type[R]) -> R:
    """A JSON request body as ``type`` (an empty body is ``{}``); ValidationError if it is
    not one (not JSON, not an object, nested too deeply, a field of the wrong type or size)."""
    return decode(body or b"{}", type)

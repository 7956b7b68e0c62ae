"""Request bodies and protobuf payloads of the tinker protocol <-> crucible IR.

JSON request bodies are decoded with msgspec into the request Structs below
(:func:`decode_request`): a body that is not JSON, not an object, nested too
deeply, or whose fields have the wrong type or size raises
:class:`~crucible_core.errors.ValidationError` naming the field
(``$.base_model: ...``), and the HTTP layer answers 400. Fields the server
does not use are not declared and are ignored (the SDK sends more than it
needs, and newer SDKs may add fields).

The SDK's own generated module (``tinker.proto.tinker_public_pb2``) is the
schema: requests are parsed and responses built with it, so the bytes are
exactly what the SDK writes and reads.

- ``forward_backward`` requests arrive as ``ForwardBackwardRequest``
  (optionally zstd-compressed); tokens are int32 little-endian bytes, tensors
  dense or sparse CSR with dtype FLOAT32/INT64.
- results go back as ``ForwardBackwardOutput``: one ``ArrayRecord`` whose
  fields (``logprobs``, ``elementwise_loss``) are all datums' values
  concatenated with int64 *byte* offsets; metrics are ``name:reduction``.
- samples go back as ``SampleResponse`` (int32 tokens, float32 logprobs).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import msgspec
import numpy as np
from msgspec import Meta
from tinker.proto import tinker_public_pb2 as pb

from crucible_core.errors import UnsupportedError, ValidationError
from crucible_core.ir import convert, decode
from crucible_core.ir.backend import Completion, Datum, ForwardBackwardResult

__all__ = [
    "LOSS_INPUT_KEYS",
    "MAX_NAME_LENGTH",
    "AdamParamsBody",
    "BodyTooLarge",
    "CreateModelRequest",
    "CreateSamplingSessionRequest",
    "EmptyRequest",
    "FwdBwdRequest",
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
    "SaveWeightsForSamplerRequest",
    "SaveWeightsRequest",
    "SessionRequest",
    "WireRequest",
    "decode_forward_backward",
    "decode_request",
    "encode_forward_backward_output",
    "encode_sample_response",
    "sanitize_metrics",
]

#: Tinker loss input names crucible's LossFnInputs carries (1-D, one value per token).
LOSS_INPUT_KEYS: tuple[str, ...] = ("target_tokens", "weights", "advantages", "logprobs")
_REDUCTIONS = frozenset({"mean", "sum", "min", "max", "slack", "hash2", "unique"})
_NUMPY_OF: dict[int, Any] = {pb.DTYPE_FLOAT32: np.float32, pb.DTYPE_INT64: np.int64}

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
    topk_prompt_logprobs: Small = 0
    topk_sample_logprobs: Small = 0
    prompt_alt_tokens_k: Small = 0
    #: Declared only to refuse it: a tensor the server does not read.
    target_prompt_logprobs: dict[str, Any] | None = None


def decode_request(body: bytes, type: type[R]) -> R:
    """A JSON request body as ``type`` (an empty body is ``{}``); ValidationError if it is
    not one (not JSON, not an object, nested too deeply, a field of the wrong type or size)."""
    return decode(body or b"{}", type)


@dataclass
class FwdBwdRequest:
    """A decoded ``forward_backward`` request (one chunk of a batch)."""

    model_id: str
    seq_id: int
    loss_fn: str
    forward_only: bool
    loss_fn_config: dict[str, float | str] = field(default_factory=dict[str, float | str])
    tokens: list[list[int]] = field(default_factory=list[list[int]])
    inputs: list[dict[str, np.ndarray]] = field(default_factory=list[dict[str, np.ndarray]])

    def datums(self) -> list[Datum]:
        """The batch as crucible Datums (ValidationError/UnsupportedError on bad input)."""
        out: list[Datum] = []
        for i, (toks, inputs) in enumerate(zip(self.tokens, self.inputs, strict=True)):
            unknown = sorted(set(inputs) - set(LOSS_INPUT_KEYS))
            if unknown:
                raise UnsupportedError(
                    f"datum {i}: loss_fn_inputs {unknown} are not supported by this server "
                    f"(it accepts {', '.join(LOSS_INPUT_KEYS)})"
                )
            if "target_tokens" not in inputs:
                raise ValidationError(f"datum {i}: loss_fn_inputs.target_tokens is required")
            raw: dict[str, Any] = {
                "model_input": toks,
                "loss_fn_inputs": {k: v.tolist() for k, v in inputs.items()},
            }
            out.append(convert(raw, Datum))
        return out


def _tensor(msg: pb.Tensor, where: str) -> np.ndarray:
    dtype = _NUMPY_OF.get(msg.dtype)
    if dtype is None:
        raise UnsupportedError(f"{where}: tensor dtype {msg.dtype} is not supported")
    shape = list(msg.shape)
    if msg.WhichOneof("encoding") == "sparse_csr":
        raise UnsupportedError(
            f"{where}: sparse (2-D) loss inputs are not supported; send one value per token"
        )
    arr = np.frombuffer(msg.dense, dtype=dtype)
    if shape and (len(shape) != 1 or shape[0] != arr.size):
        raise UnsupportedError(
            f"{where}: tensors of shape {shape} are not supported; send one value per token"
        )
    return arr


def _decompress_zstd(body: bytes, max_bytes: int) -> bytes:
    """``body`` decompressed, read in pieces so that a bomb stops at ``max_bytes``."""
    import zstandard

    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as reader:
            while piece := reader.read(1 << 16):
                out += piece
                if len(out) > max_bytes:
                    raise BodyTooLarge(
                        f"the zstd body decompresses to more than {max_bytes} bytes",
                        hint="send smaller forward_backward chunks",
                    )
    except zstandard.ZstdError as exc:
        raise ValidationError(f"bad zstd body: {exc}") from None
    return bytes(out)


def decode_forward_backward(
    body: bytes, content_encoding: str | None = None, *, max_bytes: int | None = None
) -> FwdBwdRequest:
    """Parse a ``forward_backward`` request body (ValidationError if it is not one;
    BodyTooLarge when it decompresses to more than ``max_bytes``)."""
    if content_encoding:
        encoding = content_encoding.strip().lower()
        if encoding == "zstd":
            body = _decompress_zstd(body, max_bytes if max_bytes is not None else 1 << 62)
        elif encoding != "identity":
            raise UnsupportedError(f"Content-Encoding {content_encoding!r} is not supported")
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise ValidationError(f"body is not a ForwardBackwardRequest: {exc}") from None
    config: dict[str, float | str] = {k: float(v) for k, v in msg.loss_fn_config.items()}
    for key, value in msg.loss_fn_config_v2.items():
        config[key] = value.text if value.WhichOneof("value") == "text" else float(value.number)
    req = FwdBwdRequest(
        model_id=msg.model_id,
        seq_id=int(msg.seq_id),
        loss_fn=msg.loss_fn,
        forward_only=bool(msg.forward_only),
        loss_fn_config=config,
    )
    for i, datum in enumerate(msg.data):
        tokens: list[int] = []
        for chunk in datum.model_input:
            kind = chunk.WhichOneof("chunk")
            if kind != "encoded_text":
                raise UnsupportedError(
                    f"datum {i}: {kind} chunks are not supported (text tokens only)"
                )
            tokens.extend(np.frombuffer(chunk.encoded_text.tokens, dtype="<i4").tolist())
        inputs = {
            name: _tensor(t, f"datum {i} loss_fn_inputs.{name}")
            for name, t in datum.loss_fn_inputs.items()
        }
        req.tokens.append(tokens)
        req.inputs.append(inputs)
    return req


def sanitize_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics the SDK can reduce: every key ``name:reduction`` with one colon.

    A key already in that form is kept; any other gets ``:mean`` (inner colons
    become ``_``). Non-finite values are dropped, ``loss`` itself too (the
    protocol carries it as ``loss:sum``).
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "loss":
            continue
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(v):
            continue
        name, sep, red = key.rpartition(":")
        if sep and red in _REDUCTIONS and name and ":" not in name:
            out[key] = v
        else:
            out[f"{key.replace(':', '_')}:mean"] = v
    return out


def _batched(values: Sequence[np.ndarray], dtype: int, np_dtype: Any) -> pb.BatchedTensor:
    arrays = [np.ascontiguousarray(v, dtype=np_dtype) for v in values]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    for i, a in enumerate(arrays):
        offsets[i + 1] = offsets[i] + a.nbytes
    data = b"".join(a.tobytes() for a in arrays)
    return pb.BatchedTensor(data=data, offsets=offsets.tobytes(), dtype=dtype)  # type: ignore[arg-type]


def encode_forward_backward_output(
    result: ForwardBackwardResult, batch: Sequence[Datum], loss_fn: str
) -> bytes:
    """A ``ForwardBackwardOutput`` for one chunk.

    ``logprobs`` are the target-token log-probabilities the backend returned;
    ``elementwise_loss`` is ``-logprob * weight``; ``loss:sum`` is the
    backend's own ``loss:sum`` when it reports one, else the sum of the
    elementwise loss (cross-entropy semantics).
    """
    logprobs = [np.asarray(lp, dtype=np.float32) for lp in result.logprobs]
    weights = [
        np.asarray(
            d.loss_fn_inputs.weights
            if d.loss_fn_inputs.weights is not None
            else [1.0] * len(d.loss_fn_inputs.target_tokens),
            dtype=np.float32,
        )
        for d in batch
    ]
    elementwise = [
        -lp * w if lp.shape == w.shape else np.zeros_like(lp)
        for lp, w in zip(logprobs, weights, strict=True)
    ]
    metrics = sanitize_metrics(result.metrics)
    if "loss:sum" not in metrics:
        metrics["loss:sum"] = float(sum(float(e.sum()) for e in elementwise))
    metrics.setdefault("num_tokens:sum", float(sum(len(d.model_input) for d in batch)))
    record = pb.ArrayRecord(num_datums=len(batch), type_tag=loss_fn)
    record.fields["logprobs"].CopyFrom(_batched(logprobs, pb.DTYPE_FLOAT32, np.float32))
    record.fields["elementwise_loss"].CopyFrom(_batched(elementwise, pb.DTYPE_FLOAT32, np.float32))
    out = pb.ForwardBackwardOutput(loss_fn_output_type=f"tinker:{loss_fn}:ArrayRecord")
    out.loss_fn_outputs.append(record)
    for key, value in metrics.items():
        out.metrics[key] = value
    return out.SerializeToString()


def encode_sample_response(
    completions: Sequence[Completion], prompt_logprobs: Sequence[float] | None = None
) -> bytes:
    """A ``SampleResponse`` with one sequence per completion."""
    out = pb.SampleResponse()
    for c in completions:
        seq = out.sequences.add()
        seq.stop_reason = (
            pb.STOP_REASON_LENGTH if c.finish_reason == "length" else pb.STOP_REASON_STOP
        )
        seq.tokens = np.asarray(c.tokens, dtype="<i4").tobytes()
        if c.logprobs is not None and len(c.logprobs) == len(c.tokens):
            seq.logprobs = np.asarray(c.logprobs, dtype="<f4").tobytes()
    if prompt_logprobs is not None:
        out.prompt_logprobs = np.asarray(prompt_logprobs, dtype="<f4").tobytes()
    return out.SerializeToString()

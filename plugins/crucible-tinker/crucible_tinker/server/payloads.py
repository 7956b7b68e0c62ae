"""Protobuf payloads of the tinker protocol <-> crucible IR.

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
from typing import Any

import numpy as np
from tinker.proto import tinker_public_pb2 as pb

from crucible_core.errors import UnsupportedError, ValidationError
from crucible_core.ir import convert
from crucible_core.ir.backend import Completion, Datum, ForwardBackwardResult
from crucible_tinker.server.wire import BodyTooLarge

__all__ = [
    "LOSS_INPUT_KEYS",
    "FwdBwdRequest",
    "decode_forward_backward",
    "encode_forward_backward_output",
    "encode_sample_response",
    "sanitize_metrics",
]

#: Tinker loss input names crucible's LossFnInputs carries (1-D, one value per token).
LOSS_INPUT_KEYS: tuple[str, ...] = (
    "target_tokens",
    "weights",
    "advantages",
    "logprobs",
    "sequence_ratio_mask",
)
_REDUCTIONS = frozenset({"mean", "sum", "min", "max", "slack", "hash2", "unique"})
_NUMPY_OF: dict[int, Any] = {pb.DTYPE_FLOAT32: np.float32, pb.DTYPE_INT64: np.int64}


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
    completions: Sequence[Completion],
    prompt_logprobs: Sequence[float] | None = None,
    topk_prompt: tuple[Any, Any] | None = None,
    topk_sampled: Sequence[tuple[Any, Any]] | None = None,
) -> bytes:
    """A ``SampleResponse`` with one sequence per completion; ``prompt_logprobs``,
    ``topk_prompt`` (int32 ids and float32 logprobs, both ``[len(prompt), k]``) and
    ``topk_sampled`` (one such pair per completion, ``[len(tokens), k]``) when asked."""
    out = pb.SampleResponse()
    for i, c in enumerate(completions):
        seq = out.sequences.add()
        if topk_sampled is not None:
            _set_topk(seq.topk_sampled_logprobs, topk_sampled[i])
        seq.stop_reason = (
            pb.STOP_REASON_LENGTH if c.finish_reason == "length" else pb.STOP_REASON_STOP
        )
        seq.tokens = np.asarray(c.tokens, dtype="<i4").tobytes()
        if c.logprobs is not None and len(c.logprobs) == len(c.tokens):
            seq.logprobs = np.asarray(c.logprobs, dtype="<f4").tobytes()
    if prompt_logprobs is not None:
        out.prompt_logprobs = np.asarray(prompt_logprobs, dtype="<f4").tobytes()
    if topk_prompt is not None:
        _set_topk(out.topk_prompt_logprobs, topk_prompt)
    return out.SerializeToString()


def _set_topk(message: Any, pair: tuple[Any, Any]) -> None:
    """Fill a ``TopkLogprobs`` message from int32 ids and float32 logprobs ``[n, k]``."""
    token_ids = np.asarray(pair[0], dtype="<i4")
    logprobs = np.asarray(pair[1], dtype="<f4")
    message.length, message.k = token_ids.shape
    message.token_ids = token_ids.tobytes()
    message.logprobs = logprobs.tobytes()

"""Settings of the Tinker-compatible server and of its fault injection (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FaultConfig", "ServerConfig"]

#: Bytes a forward_backward body spends per token at most: the int32 token, the int64
#: target and four float32 loss inputs (weights, advantages, logprobs, one spare).
_BODY_BYTES_PER_TOKEN = 4 + 8 + 4 * 4
#: Protobuf framing per datum (tags, lengths, the loss input names, dtypes, shapes).
_BODY_BYTES_PER_DATUM = 256
#: The request's own fields (model id, loss name, loss config).
_BODY_BYTES_FIXED = 64 * 1024
#: Context length assumed for the default body limit when neither the backend nor the
#: configuration declares one.
_FALLBACK_CONTEXT = 32_768


@dataclass(frozen=True)
class FaultConfig:
    """Faults the server injects into a seeded fraction of requests (tests, benchmarks).

    Each request under ``/api/v1`` whose path (after ``/api/v1/``) is in
    ``paths`` (every path when ``paths`` is None) draws from one
    ``random.Random(seed)``, in arrival order:

    - ``latency_s`` is added to every such request (a slow network or clock);
      ``delay_fraction`` of them wait ``delay_s`` more.
    - ``error_fraction`` are answered ``error_status`` (a 5xx) without being
      handled; the answer carries ``retry-after-ms: retry_after_ms`` so that a
      client that honours it retries quickly.
    - ``drop_fraction`` lose their connection before being handled (the
      request never happened).
    - ``drop_after_fraction`` are handled, then lose their connection before
      the answer arrives (the request happened but the client cannot know):
      the case that makes deduplication necessary.
    """

    seed: int = 0
    latency_s: float = 0.0
    delay_fraction: float = 0.0
    delay_s: float = 0.0
    error_fraction: float = 0.0
    error_status: int = 503
    retry_after_ms: int = 50
    drop_fraction: float = 0.0
    drop_after_fraction: float = 0.0
    paths: frozenset[str] | None = None

    def __post_init__(self) -> None:
        for name in ("delay_fraction", "error_fraction", "drop_fraction", "drop_after_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FaultConfig.{name} must be in [0, 1], got {value}")
        if self.latency_s < 0 or self.delay_s < 0:
            raise ValueError("FaultConfig latencies must be >= 0")
        if not 500 <= self.error_status <= 599:
            raise ValueError(f"FaultConfig.error_status must be a 5xx, got {self.error_status}")

    @property
    def active(self) -> bool:
        return bool(
            self.latency_s
            or (self.delay_fraction and self.delay_s)
            or self.error_fraction
            or self.drop_fraction
            or self.drop_after_fraction
        )


@dataclass(frozen=True)
class ServerConfig:
    """How the server behaves towards the SDK.

    ``api_keys``: the keys accepted in ``X-API-Key`` (the SDK only sends keys
    starting ``tml-``). ``long_poll_s``: how long ``retrieve_future`` holds a
    request for a pending result before answering ``try_again`` (the SDK
    re-polls at once, and reads with a 45 s timeout). ``fwdbwd_max_chunk_len``,
    ``parallel_fwdbwd_chunks``, ``proto_compress_fwdbwd`` and
    ``use_pyqwest_transport`` are handed to the SDK in ``/client/config``.
    ``fwdbwd_max_chunk_bytes`` (the SDK's ``fwdbwd_max_chunk_bytes_count``) is
    handed over too: the SDK starts a new chunk before one would exceed it
    (estimated from the tokens and tensors, before compression).
    ``max_body_bytes``: the largest request body accepted, compressed or not
    (413 beyond it; None: :meth:`body_limit` sizes it to the largest
    legitimate forward_backward chunk). ``max_lora_rank``: the largest LoRA
    rank accepted when the backend declares no ``max_lora_rank`` of its own
    (the smaller of the two otherwise).
    ``result_ttl_s``: how long a finished result stays retrievable.
    ``session_ttl_s``: a session that sends nothing for this long (the SDK
    heartbeats every 10 s) is finished and its models are closed.
    """

    api_keys: tuple[str, ...]
    long_poll_s: float = 10.0
    fwdbwd_max_chunk_len: int = 1024
    fwdbwd_max_chunk_bytes: int = 5_000_000
    max_body_bytes: int | None = None
    max_lora_rank: int = 512
    parallel_fwdbwd_chunks: bool = True
    proto_compress_fwdbwd: bool = False
    use_pyqwest_transport: bool = False
    result_ttl_s: float = 900.0
    session_ttl_s: float = 300.0
    max_context_length: int | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if not self.api_keys:
            raise ValueError("ServerConfig.api_keys must hold at least one key")
        for key in self.api_keys:
            if not key.startswith("tml-"):
                raise ValueError(
                    "server API keys must start with 'tml-' (the tinker SDK refuses other keys)"
                )
        if not 0 < self.long_poll_s < 45:
            raise ValueError("long_poll_s must be in (0, 45): the SDK reads with a 45 s timeout")
        if self.fwdbwd_max_chunk_len < 1:
            raise ValueError("fwdbwd_max_chunk_len must be >= 1")
        if self.fwdbwd_max_chunk_bytes < 1:
            raise ValueError("fwdbwd_max_chunk_bytes must be >= 1")
        if self.max_body_bytes is not None and self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be >= 1024 (the SDK's own requests need that)")
        if self.max_lora_rank < 1:
            raise ValueError("max_lora_rank must be >= 1")

    def body_limit(self, context_length: int | None) -> int:
        """The largest request body accepted (``max_body_bytes`` when set).

        Otherwise the largest forward_backward chunk the SDK sends: datums whose
        estimated bytes add up to ``fwdbwd_max_chunk_bytes``, or one datum of
        ``context_length`` tokens alone when it is bigger than that, plus the
        protobuf framing of ``fwdbwd_max_chunk_len`` datums. JSON bodies are far
        smaller.
        """
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        context = self.max_context_length or context_length or _FALLBACK_CONTEXT
        payload = max(self.fwdbwd_max_chunk_bytes, context * _BODY_BYTES_PER_TOKEN)
        return payload + self.fwdbwd_max_chunk_len * _BODY_BYTES_PER_DATUM + _BODY_BYTES_FIXED

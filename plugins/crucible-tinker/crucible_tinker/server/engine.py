"""The server's state and how tinker operations map onto a crucible TrainingBackend.

Only the public contract (:mod:`crucible_core.contracts`) is used: a model is
a ``TrainingSession`` made by ``backend.create_session(TrainingJob)``; a
sampler comes from ``save_weights_for_sampler`` or ``backend.load_sampler``.

Threads: HTTP handlers run on the server's event loop and never block on a
model. Each training model owns two threads: a *dispatcher* that takes
operations from the model's :class:`~crucible_tinker.server.ordering.OrderedQueue`
in ``seq_id`` order and submits them to the crucible session (which applies
them in submission order and returns futures, so dispatch does not wait for
compute), and a *completer* that waits on those futures in order and
resolves the tinker futures. Sampling and sampler loading run on a small
thread pool.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from crucible_core.contracts import Sampler, TrainingBackend, TrainingSession
from crucible_core.errors import (
    ConfigError,
    CrucibleError,
    NotFound,
    UnsupportedError,
    ValidationError,
)
from crucible_core.ir import convert, to_builtins
from crucible_core.ir.backend import (
    AdamParams,
    Capabilities,
    CheckpointRef,
    Completion,
    ForwardBackwardResult,
    OptimStepResult,
    Prompt,
    SamplingParams,
)
from crucible_core.ir.training import (
    LoRA,
    Loss,
    ModelSpec,
    TrainingJob,
)
from crucible_tinker.server import ids
from crucible_tinker.server.config import ServerConfig
from crucible_tinker.server.futures import JSON, PROTOBUF, Entry, FutureStore, Payload
from crucible_tinker.server.ordering import OrderedQueue, StaleSequence
from crucible_tinker.server.wire import (
    CreateModelRequest,
    CreateSamplingSessionRequest,
    EmptyRequest,
    FwdBwdRequest,
    LoadWeightsRequest,
    LoraConfigBody,
    ModelRequest,
    OptimStepRequest,
    PromptBody,
    SampleRequest,
    SamplingParamsBody,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    encode_forward_backward_output,
    encode_sample_response,
)

__all__ = ["ApiError", "AppliedStep", "Engine"]

log = logging.getLogger("crucible_tinker.server")

#: tinker loss name -> crucible loss name, for the losses both sides define.
LOSS_MAP: dict[str, Literal["cross_entropy", "importance_sampling", "ppo"]] = {
    "cross_entropy": "cross_entropy",
    "importance_sampling": "importance_sampling",
    "ppo": "ppo",
}


class ApiError(Exception):
    """An HTTP error answer: ``status`` and a ``detail`` message."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class AppliedStep:
    """One optimizer step the backend applied (the log tests check for duplicates)."""

    model_id: str
    seq_id: int
    step: int
    at: float


@dataclass
class _Op:
    kind: str
    seq_id: int
    entry: Entry
    submit: Callable[[_Model], Callable[[], Payload] | None]


@dataclass
class _Model:
    model_id: str
    session_id: str
    model_seq_id: int
    base_model: str
    lora: dict[str, Any]
    queue: OrderedQueue[_Op] = field(default_factory=lambda: OrderedQueue[_Op](first_seq=0))
    session: TrainingSession | None = None
    error: str | None = None
    done: queue.Queue[tuple[_Op, Callable[[], Payload]] | None] = field(
        default_factory=lambda: queue.Queue[tuple[_Op, Callable[[], Payload]] | None]()
    )
    threads: list[threading.Thread] = field(default_factory=list[threading.Thread])


@dataclass
class _Session:
    session_id: str
    created: float
    last_seen: float
    finished: bool = False
    models: list[str] = field(default_factory=list[str])


@dataclass
class _SamplerEntry:
    sampling_session_id: str
    sampler: Sampler
    base_model: str
    model_path: str | None


@dataclass
class _Checkpoint:
    uri: str
    ref: CheckpointRef
    base_model: str
    lora: dict[str, Any]
    sampler: Sampler | None = None


def classify(exc: BaseException) -> tuple[str, Literal["user", "server"]]:
    """An exception as (message, tinker error category)."""
    if isinstance(exc, CrucibleError):
        category: Literal["user", "server"] = (
            "user" if isinstance(exc, ConfigError | NotFound) else "server"
        )
        return str(exc), category
    if isinstance(exc, ValueError | TypeError | KeyError):
        return f"{type(exc).__name__}: {exc}", "user"
    return f"{type(exc).__name__}: {exc}", "server"


def _json(data: Mapping[str, Any]) -> Payload:
    return Payload(json.dumps(data).encode(), JSON)


def _seq(value: int | None, name: str) -> int:
    if value is None:
        raise ApiError(400, f"`{name}` (an integer) is required")
    return value


class Engine:
    """Sessions, models, samplers, checkpoints and futures of one server."""

    def __init__(
        self,
        backend: TrainingBackend,
        *,
        backend_name: str,
        config: ServerConfig,
        futures: FutureStore,
        state_dir: Path | None = None,
    ) -> None:
        self.backend = backend
        self.backend_name = backend_name
        self.config = config
        self.futures = futures
        self.state_dir = state_dir
        self._lock = threading.RLock()
        self._sessions: dict[str, _Session] = {}
        self._models: dict[str, _Model] = {}
        self._samplers: dict[str, _SamplerEntry] = {}
        self._checkpoints: dict[str, _Checkpoint] = {}
        self._sample_requests: dict[tuple[str, int], Entry] = {}
        self._base_samplers: dict[str, Sampler] = {}
        self._sampling_sessions: dict[tuple[str, int], str] = {}
        self.applied_steps: list[AppliedStep] = []
        self.stats: dict[str, int] = {
            "duplicate_submissions": 0,
            "out_of_order_arrivals": 0,
            "telemetry_batches": 0,
            "heartbeats": 0,
        }
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tinker-srv")
        self._caps: Capabilities | None = None
        self._closed = False
        if state_dir is not None:
            self._load_index()

    # -- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Stop every model's threads and close its crucible session."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            models = list(self._models.values())
        for model in models:
            self._close_model(model, "the server is shutting down")
        for model in models:
            for t in model.threads:
                t.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _close_model(self, model: _Model, reason: str) -> None:
        for op in model.queue.close():
            op.entry.fail(f"{reason}; operation {op.kind} seq {op.seq_id} was not run", "server")
        if model.session is not None:
            try:
                model.session.close()
            except Exception:
                log.warning("closing the session of model %s failed", model.model_id, exc_info=True)

    # -- sessions --------------------------------------------------------------

    def backend_capabilities(self) -> Capabilities:
        """The served backend's capabilities (asked once: they bound every request)."""
        if self._caps is None:
            self._caps = self.backend.capabilities()
        return self._caps

    @property
    def context_length(self) -> int | None:
        """The longest sequence accepted: the configured one, else the backend's."""
        return self.config.max_context_length or self.backend_capabilities().max_context_length

    @property
    def max_lora_rank(self) -> int:
        """The largest LoRA rank accepted: the backend's when it declares one, never more
        than ``ServerConfig.max_lora_rank``."""
        declared = self.backend_capabilities().max_lora_rank
        cap = self.config.max_lora_rank
        return min(cap, declared) if declared is not None else cap

    def check_base_model(self, name: str) -> None:
        """ApiError 400 unless the served backend can load ``name``: one of the models its
        capabilities list (any name when the list is empty), or, when it loads models by
        path (``metadata.models_by_path``), an existing directory."""
        caps = self.backend_capabilities()
        if not caps.models or name in caps.models:
            return
        by_path = bool(caps.metadata.get("models_by_path"))
        if by_path:
            try:
                if Path(name).expanduser().is_dir():
                    return
            except (OSError, ValueError):  # too long, or a NUL byte: not a directory
                pass
        shown = name if len(name) <= 80 else name[:77] + "..."
        served = ", ".join(caps.models) + (
            ", or a model directory on the server" if by_path else ""
        )
        raise ApiError(
            400,
            f"base model {shown!r} is not served here "
            f"(the {self.backend_name!r} backend serves {served})",
        )

    def create_session(self, body: EmptyRequest) -> dict[str, Any]:
        sid = ids.new_session_id()
        now = time.monotonic()
        with self._lock:
            self._sessions[sid] = _Session(sid, now, now)
        return {"type": "create_session", "session_id": sid}

    def _session(self, session_id: str) -> _Session:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise ApiError(404, f"unknown session {session_id!r}")
        if session.finished:
            raise ApiError(410, f"session {session_id!r} has finished")
        return session

    def heartbeat(self, session_id: str) -> dict[str, Any]:
        session = self._session(session_id)
        session.last_seen = time.monotonic()
        self.stats["heartbeats"] += 1
        return {"type": "session_heartbeat"}

    def reap(self, now: float | None = None) -> list[str]:
        """Finish sessions silent for longer than ``config.session_ttl_s`` (no heartbeat and no
        request on their models): their models are closed. Returns the sessions finished."""
        moment = time.monotonic() if now is None else now
        with self._lock:
            stale = [
                s.session_id
                for s in self._sessions.values()
                if not s.finished and moment - s.last_seen > self.config.session_ttl_s
            ]
        for sid in stale:
            log.info(
                "session %s sent nothing for %.0f s: finishing it", sid, self.config.session_ttl_s
            )
            self.finish_session(sid)
        return stale

    def finish_session(self, session_id: str) -> dict[str, Any]:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise ApiError(404, f"unknown session {session_id!r}")
            if session.finished:
                return {}
            session.finished = True
            models = [self._models[m] for m in session.models if m in self._models]
        for model in models:
            self._close_model(model, f"session {session_id} finished")
        return {}

    # -- models ----------------------------------------------------------------

    def _resubmitted_creation(self, model: _Model) -> dict[str, Any]:
        """The answer to a retried model creation: the original request's future."""
        self.stats["duplicate_submissions"] += 1
        rid = model.queue.seen(0)
        if rid is None:
            raise ApiError(409, f"model {model.model_id} is being created; retry")
        return {"request_id": rid, "model_id": model.model_id}

    def _new_model(
        self, session_id: str, model_seq_id: int, base_model: str, lora: dict[str, Any]
    ) -> tuple[_Model, bool]:
        mid = ids.model_id(session_id, model_seq_id)
        with self._lock:
            existing = self._models.get(mid)
            if existing is not None:
                return existing, False
            model = _Model(mid, session_id, model_seq_id, base_model, lora)
            self._models[mid] = model
            self._sessions[session_id].models.append(mid)
        for target, name in ((self._dispatch_loop, "dispatch"), (self._complete_loop, "complete")):
            t = threading.Thread(
                target=target, args=(model,), name=f"tinker-{name}-{mid}", daemon=True
            )
            model.threads.append(t)
            t.start()
        return model, True

    def _model(self, model_id: str) -> _Model:
        with self._lock:
            model = self._models.get(model_id)
            session = self._sessions.get(model.session_id) if model is not None else None
        if model is None:
            raise ApiError(404, f"unknown model {model_id!r}")
        if session is not None:
            session.last_seen = time.monotonic()
        if model.queue.closed:
            raise ApiError(410, f"model {model_id!r} is closed (its session finished)")
        return model

    def _job(self, model: _Model, seed: int | None) -> TrainingJob:
        raw: dict[str, Any] = {
            "backend": self.backend_name,
            "model_spec": {"name": model.base_model},
            # Tinker's LoRA: every linear layer the train_* flags allow, no dropout.
            "adapter_config": {
                "kind": "lora",
                "target_modules": ["all-linear"],
                "dropout": 0.0,
                **model.lora,
            },
            "learning_config": {"seed": seed or 0},
            # The data arrives over the wire, batch by batch; the job names no dataset.
            "dataset_spec": {"uri": "tinker:wire"},
            "metadata": {"tinker_model_id": model.model_id},
        }
        return convert(raw, TrainingJob)

    def _create(self, model: _Model, seed: int | None) -> TrainingSession:
        job = self._job(model, seed)
        return self.backend.create_session(job, run_dir=self._model_dir(model))

    def _model_dir(self, model: _Model) -> Path:
        """Where a model's checkpoints go: under the server's state directory, else its home."""
        from crucible_core.runtime import paths

        root = self.state_dir if self.state_dir is not None else paths.crucible_home()
        return root / "tinker-server" / "models" / model.model_id.replace(":", "-")

    def create_model(self, body: CreateModelRequest) -> dict[str, Any]:
        session_id = body.session_id
        self._session(session_id)
        self.check_base_model(body.base_model)
        if body.optimizer_config is not None and body.optimizer_config.type != "adamw":
            raise ApiError(400, "only the adamw optimizer is supported by this server")
        lora_raw = body.lora_config or LoraConfigBody()
        if lora_raw.rank > self.max_lora_rank:
            raise ApiError(
                400,
                f"lora_config.rank {lora_raw.rank} is above {self.max_lora_rank}, the largest "
                f"rank the {self.backend_name!r} backend is served with",
            )
        lora = {
            "rank": lora_raw.rank,
            "train_mlp": lora_raw.train_mlp,
            "train_attn": lora_raw.train_attn,
            "train_unembed": lora_raw.train_unembed,
        }
        try:
            convert({"kind": "lora", **lora}, LoRA)
        except ValidationError as exc:
            raise ApiError(400, f"bad lora_config: {exc}") from None
        seed = lora_raw.seed if lora_raw.seed is not None and lora_raw.seed >= 0 else None
        model, created = self._new_model(session_id, body.model_seq_id, body.base_model, lora)
        if not created:
            return self._resubmitted_creation(model)
        entry = self.futures.create("create_model")

        def submit(m: _Model) -> Callable[[], Payload]:
            m.session = self._create(m, seed)
            return lambda: _json({"model_id": m.model_id, "type": "create_model"})

        model.queue.offer(0, entry.request_id, _Op("create_model", 0, entry, submit))
        return {"request_id": entry.request_id, "model_id": model.model_id}

    def get_info(self, body: ModelRequest) -> dict[str, Any]:
        model = self._model(body.model_id)
        return {
            "type": "get_info",
            "model_id": model.model_id,
            "model_data": {
                "arch": f"crucible:{self.backend_name}",
                "model_name": model.base_model,
                "tokenizer_id": self._tokenizer_id(model.base_model),
            },
            "is_lora": True,
            "lora_rank": model.lora["rank"],
            "model_name": model.base_model,
            "optimizer_config": {"type": "adamw"},
        }

    def _tokenizer_id(self, base_model: str) -> str:
        # A tokenizer the backend keeps in a local directory is named by that path, so an
        # SDK on this machine can load it with `get_tokenizer()` without a hub.
        try:
            name = self.backend.get_tokenizer(ModelSpec(name=base_model)).name
        except Exception:
            return base_model
        return name if ":" not in name and Path(name).is_dir() else base_model

    # -- ordered operations ----------------------------------------------------

    def _enqueue(self, model: _Model, seq_id: int, kind: str, submit: Any) -> dict[str, Any]:
        if seq_id < 1:
            raise ApiError(400, f"seq_id must be >= 1 for {kind}, got {seq_id}")
        known = model.queue.seen(seq_id)
        if known is not None:
            self.stats["duplicate_submissions"] += 1
            return {"request_id": known, "model_id": model.model_id}
        entry = self.futures.create(kind)
        try:
            offer = model.queue.offer(seq_id, entry.request_id, _Op(kind, seq_id, entry, submit))
        except StaleSequence as exc:
            raise ApiError(400, str(exc)) from None
        except RuntimeError:
            raise ApiError(410, f"model {model.model_id!r} is closed") from None
        if not offer.accepted:
            self.stats["duplicate_submissions"] += 1
            entry.fail("duplicate submission", "user")
        elif offer.out_of_order:
            self.stats["out_of_order_arrivals"] += 1
        return {"request_id": offer.request_id, "model_id": model.model_id}

    def _dispatch_loop(self, model: _Model) -> None:
        while True:
            op = model.queue.take()
            if op is None:
                break
            if model.error is not None and op.kind != "create_model":
                op.entry.fail(f"model {model.model_id} is unusable: {model.error}", "server")
                continue
            log.debug("dispatch %s seq %d (%s)", model.model_id, op.seq_id, op.kind)
            try:
                finish = op.submit(model)
            except BaseException as exc:
                message, category = classify(exc)
                if op.kind in ("create_model", "create_from_state"):
                    model.error = message
                op.entry.fail(message, category)
                continue
            if finish is not None:
                model.done.put((op, finish))
        model.done.put(None)

    def _complete_loop(self, model: _Model) -> None:
        while True:
            item = model.done.get()
            if item is None:
                break
            op, finish = item
            try:
                op.entry.resolve(finish())
                log.debug("completed %s seq %d (%s)", model.model_id, op.seq_id, op.kind)
            except BaseException as exc:
                message, category = classify(exc)
                op.entry.fail(message, category)

    def forward_backward(self, req: FwdBwdRequest) -> dict[str, Any]:
        model = self._model(req.model_id)
        self._check_batch_size(req)
        known = model.queue.seen(req.seq_id)
        if known is not None:
            self.stats["duplicate_submissions"] += 1
            return {"request_id": known, "model_id": model.model_id}
        kind = "forward" if req.forward_only else "forward_backward"

        def submit(m: _Model) -> Callable[[], Payload]:
            assert m.session is not None
            loss = self._loss(req.loss_fn, req.loss_fn_config)
            batch = req.datums()
            if not batch:
                raise ValidationError("forward_backward needs at least one datum")
            call = m.session.forward if req.forward_only else m.session.forward_backward
            fut = call(batch, loss)

            def finish() -> Payload:
                result: ForwardBackwardResult = fut.result()
                return Payload(encode_forward_backward_output(result, batch, req.loss_fn), PROTOBUF)

            return finish

        return self._enqueue(model, req.seq_id, kind, submit)

    def _check_batch_size(self, req: FwdBwdRequest) -> None:
        """A chunk no bigger than the SDK sends: ``fwdbwd_max_chunk_len`` datums, each
        within the context length (ApiError 400 otherwise)."""
        if len(req.tokens) > self.config.fwdbwd_max_chunk_len:
            raise ApiError(
                400,
                f"{len(req.tokens)} datums in one forward_backward request; this server takes "
                f"at most {self.config.fwdbwd_max_chunk_len} (fwdbwd_max_chunk_len)",
            )
        limit = self.context_length
        if limit is None:
            return
        for i, toks in enumerate(req.tokens):
            if len(toks) > limit:
                raise ApiError(
                    400, f"datum {i} has {len(toks)} tokens; the context length is {limit}"
                )

    def _loss(self, name: str, config: Mapping[str, float | str]) -> Loss:
        crucible_name = LOSS_MAP.get(name)
        if crucible_name is None:
            raise UnsupportedError(
                f"loss {name!r} is not supported by this server (supported: {', '.join(LOSS_MAP)})"
            )
        caps = self.backend_capabilities()
        if crucible_name not in caps.losses:
            raise UnsupportedError(
                f"the {self.backend_name!r} backend does not support the {name!r} loss "
                f"(it supports {', '.join(caps.losses)})"
            )
        return convert({"name": crucible_name, "params": dict(config)}, Loss)

    def optim_step(self, body: OptimStepRequest) -> dict[str, Any]:
        model = self._model(body.model_id)
        seq_id = _seq(body.seq_id, "seq_id")
        if body.adam_params is None:
            raise ApiError(400, "only adam_params are supported by this server")
        params_raw = body.adam_params.given()

        def submit(m: _Model) -> Callable[[], Payload]:
            assert m.session is not None
            params = convert(params_raw, AdamParams)
            fut = m.session.optim_step(params)

            def finish() -> Payload:
                result: OptimStepResult = fut.result()
                with self._lock:
                    self.applied_steps.append(
                        AppliedStep(m.model_id, seq_id, result.step, time.time())
                    )
                metrics: dict[str, float] = {
                    "step": float(result.step),
                    "learning_rate": float(result.learning_rate),
                }
                if result.grad_norm is not None and math.isfinite(result.grad_norm):
                    metrics["grad_norm"] = float(result.grad_norm)
                for k, v in result.metrics.items():
                    if math.isfinite(v):
                        metrics.setdefault(k, float(v))
                return _json({"metrics": metrics, "type": "optim_step"})

            return finish

        return self._enqueue(model, seq_id, "optim_step", submit)

    def _crucible_name(self, model: _Model, name: str) -> str:
        # Backends may keep checkpoints of every model side by side: make names unique.
        return f"{model.model_id.replace(':', '-')}-{name}"

    def save_weights(self, body: SaveWeightsRequest) -> dict[str, Any]:
        model = self._model(body.model_id)
        seq_id = _seq(body.seq_id, "seq_id")
        name = body.path or f"state-{seq_id}"
        try:
            path = ids.CheckpointPath.make(model.model_id, "state", name)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        overwrite = body.overwrite
        with self._lock:
            if path.uri in self._checkpoints and not overwrite and model.queue.seen(seq_id) is None:
                raise ApiError(409, f"checkpoint {path.uri} exists (pass overwrite=True)")

        def submit(m: _Model) -> Callable[[], Payload]:
            assert m.session is not None
            fut = m.session.save_state(self._crucible_name(m, path.name))

            def finish() -> Payload:
                ref: CheckpointRef = fut.result()
                self._register_checkpoint(_Checkpoint(path.uri, ref, m.base_model, m.lora))
                return _json({"path": path.uri, "type": "save_weights"})

            return finish

        return self._enqueue(model, seq_id, "save_weights", submit)

    def save_weights_for_sampler(self, body: SaveWeightsForSamplerRequest) -> dict[str, Any]:
        model = self._model(body.model_id)
        seq_id = _seq(body.seq_id, "seq_id")
        name = body.path
        sampling_seq = body.sampling_session_seq_id
        if name is None and sampling_seq is None:
            raise ApiError(400, "give `path` or `sampling_session_seq_id`")
        try:
            label = name if name is not None else f"sampler-s{sampling_seq}"
            path = ids.CheckpointPath.make(model.model_id, "sampler", label)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

        def submit(m: _Model) -> Callable[[], Payload]:
            assert m.session is not None
            fut = m.session.save_weights_for_sampler(self._crucible_name(m, path.name))

            def finish() -> Payload:
                sampler: Sampler = fut.result()
                ref = sampler.checkpoint
                if ref is not None:
                    self._register_checkpoint(
                        _Checkpoint(path.uri, ref, m.base_model, m.lora, sampler=sampler)
                    )
                if name is not None:
                    return _json({"path": path.uri, "type": "save_weights_for_sampler"})
                assert isinstance(sampling_seq, int)
                ssid = ids.sampling_session_id(m.session_id, sampling_seq)
                with self._lock:
                    self._samplers[ssid] = _SamplerEntry(ssid, sampler, m.base_model, path.uri)
                    self._sampling_sessions[(m.session_id, sampling_seq)] = ssid
                return _json({"sampling_session_id": ssid, "type": "save_weights_for_sampler"})

            return finish

        return self._enqueue(model, seq_id, "save_weights_for_sampler", submit)

    def load_weights(self, body: LoadWeightsRequest) -> dict[str, Any]:
        record = self._checkpoint(body.path)
        if body.session_id is not None:
            return self._create_from_state(body, body.session_id, record)
        if body.model_id is None:
            raise ApiError(400, "give `model_id` and `seq_id`, or `session_id` and `model_seq_id`")
        model = self._model(body.model_id)
        seq_id = _seq(body.seq_id, "seq_id")

        def submit(m: _Model) -> Callable[[], Payload]:
            assert m.session is not None
            fut = m.session.load_state(record.ref)

            def finish() -> Payload:
                fut.result()
                return _json({"path": record.uri, "model_id": m.model_id, "type": "load_weights"})

            return finish

        return self._enqueue(model, seq_id, "load_weights", submit)

    def _create_from_state(
        self, body: LoadWeightsRequest, session_id: str, record: _Checkpoint
    ) -> dict[str, Any]:
        self._session(session_id)
        model_seq_id = _seq(body.model_seq_id, "model_seq_id")
        if body.base_model is not None:
            self.check_base_model(body.base_model)
        base_model = body.base_model or record.base_model
        if record.ref.kind != "state":
            raise ApiError(400, f"{record.uri} holds sampler weights; load a `weights` path")
        model, created = self._new_model(session_id, model_seq_id, str(base_model), record.lora)
        if not created:
            return self._resubmitted_creation(model)
        entry = self.futures.create("create_from_state")

        def submit(m: _Model) -> Callable[[], Payload]:
            m.session = self._create(m, None)
            m.session.load_state(record.ref).result()
            return lambda: _json(
                {"model_id": m.model_id, "path": record.uri, "type": "load_weights"}
            )

        model.queue.offer(0, entry.request_id, _Op("create_from_state", 0, entry, submit))
        return {"request_id": entry.request_id, "model_id": model.model_id}

    # -- checkpoints -----------------------------------------------------------

    def _register_checkpoint(self, record: _Checkpoint) -> None:
        with self._lock:
            self._checkpoints[record.uri] = record
            if self.state_dir is not None:
                self._save_index()

    def _checkpoint(self, uri: str) -> _Checkpoint:
        try:
            ids.CheckpointPath.parse(uri)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        with self._lock:
            record = self._checkpoints.get(uri)
        if record is None:
            raise ApiError(404, f"no checkpoint {uri} on this server")
        return record

    def _index_path(self) -> Path:
        assert self.state_dir is not None
        return self.state_dir / "checkpoints.json"

    def _save_index(self) -> None:
        assert self.state_dir is not None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = {
            uri: {"ref": to_builtins(r.ref), "base_model": r.base_model, "lora": r.lora}
            for uri, r in self._checkpoints.items()
        }
        tmp = self._index_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(self._index_path())

    def _load_index(self) -> None:
        path = self._index_path()
        if not path.exists():
            return
        data = json.loads(path.read_text(encoding="utf-8"))
        for uri, item in data.items():
            ref = convert(item["ref"], CheckpointRef)
            self._checkpoints[uri] = _Checkpoint(uri, ref, item["base_model"], item["lora"])

    # -- sampling ----------------------------------------------------------------

    def create_sampling_session(self, body: CreateSamplingSessionRequest) -> dict[str, Any]:
        """Blocking (may load a model): call from a worker thread."""
        session_id = body.session_id
        self._session(session_id)
        seq = body.sampling_session_seq_id
        with self._lock:
            known = self._sampling_sessions.get((session_id, seq))
        if known is not None:
            self.stats["duplicate_submissions"] += 1
            return {"type": "create_sampling_session", "sampling_session_id": known}
        model_path = body.model_path
        base_model = body.base_model
        if model_path:
            record = self._checkpoint(model_path)
            sampler = record.sampler
            if sampler is None:
                if record.ref.kind != "sampler":
                    raise ApiError(
                        400, f"{record.uri} holds training state; sample from sampler_weights"
                    )
                sampler = self.backend.load_sampler(ModelSpec(name=record.base_model), record.ref)
                record.sampler = sampler
            base = record.base_model
        elif base_model:
            self.check_base_model(base_model)
            with self._lock:
                sampler = self._base_samplers.get(base_model)
            if sampler is None:
                sampler = self.backend.load_sampler(ModelSpec(name=base_model), None)
                with self._lock:
                    self._base_samplers.setdefault(base_model, sampler)
            base = base_model
        else:
            raise ApiError(400, "give `model_path` or `base_model`")
        ssid = ids.sampling_session_id(session_id, seq)
        with self._lock:
            self._samplers[ssid] = _SamplerEntry(ssid, sampler, base, model_path or None)
            self._sampling_sessions[(session_id, seq)] = ssid
        return {"type": "create_sampling_session", "sampling_session_id": ssid}

    def get_sampler(self, sampling_session_id: str) -> dict[str, Any]:
        with self._lock:
            entry = self._samplers.get(sampling_session_id)
        if entry is None:
            raise ApiError(404, f"unknown sampler {sampling_session_id!r}")
        out: dict[str, Any] = {
            "sampler_id": entry.sampling_session_id,
            "base_model": entry.base_model,
        }
        if entry.model_path:
            out["model_path"] = entry.model_path
        return out

    def asample(self, body: SampleRequest) -> dict[str, Any]:
        ssid = body.sampling_session_id
        seq_id = body.seq_id
        with self._lock:
            sampler_entry = self._samplers.get(ssid)
            previous = self._sample_requests.get((ssid, seq_id))
        if sampler_entry is None:
            raise ApiError(404, f"unknown sampling session {ssid!r}")
        n = body.num_samples
        if previous is not None and not previous.failed:
            self.stats["duplicate_submissions"] += 1
            return {
                "request_id": previous.request_id,
                "sample_sequence_ids": ids.sequence_ids(previous.request_id, n),
            }
        if body.prompt_logprobs or body.topk_prompt_logprobs or body.topk_sample_logprobs:
            raise ApiError(
                400,
                "prompt logprobs and top-k logprobs are not supported by this server "
                "(the crucible Sampler contract returns sampled-token logprobs only)",
            )
        if body.target_prompt_logprobs is not None or body.prompt_alt_tokens_k:
            raise ApiError(400, "target_prompt_logprobs / prompt_alt_tokens_k are not supported")
        tokens = self._prompt_tokens(body.prompt)
        params = self._sampling_params(
            body.sampling_params or SamplingParamsBody(), n, sampler_entry.sampler
        )
        entry = self.futures.create("sample")
        with self._lock:
            self._sample_requests[(ssid, seq_id)] = entry
        sampler = sampler_entry.sampler

        def run() -> None:
            try:
                completions: list[Completion] = sampler.sample(
                    Prompt(tokens=tokens), params
                ).result()
                entry.resolve(Payload(encode_sample_response(completions), PROTOBUF))
            except BaseException as exc:
                message, category = classify(exc)
                entry.fail(message, category)

        self._pool.submit(run)
        return {
            "request_id": entry.request_id,
            "sample_sequence_ids": ids.sequence_ids(entry.request_id, n),
        }

    def _prompt_tokens(self, prompt: PromptBody) -> list[int]:
        tokens: list[int] = []
        for chunk in prompt.chunks:
            if chunk.type != "encoded_text":
                raise ApiError(400, "only encoded_text prompt chunks are supported")
            tokens.extend(chunk.tokens)
        if not tokens:
            raise ApiError(400, "the prompt is empty")
        limit = self.context_length
        if limit is not None and len(tokens) > limit:
            raise ApiError(
                400, f"the prompt has {len(tokens)} tokens; the context length is {limit}"
            )
        return tokens

    def _sampling_params(self, raw: SamplingParamsBody, n: int, sampler: Sampler) -> SamplingParams:
        out: dict[str, Any] = {"n": n}
        limit = self.context_length
        if raw.max_tokens is not None:
            if limit is not None and raw.max_tokens > limit:
                raise ApiError(
                    400,
                    f"sampling_params.max_tokens {raw.max_tokens} is above the context "
                    f"length ({limit})",
                )
            out["max_tokens"] = raw.max_tokens
        for key in ("temperature", "top_p", "seed"):
            value = getattr(raw, key)
            if value is not None:
                out[key] = value
        if raw.top_k is not None and raw.top_k > 0:
            out["top_k"] = raw.top_k
        stop = raw.stop
        if isinstance(stop, str):
            out["stop"] = [stop]
        elif stop:
            if all(isinstance(s, str) for s in stop):
                out["stop"] = stop
            elif all(isinstance(s, int) for s in stop):
                # Stop tokens: the crucible contract stops on strings, so decode them.
                out["stop"] = [sampler.tokenizer.decode([int(s)]) for s in stop]
            else:
                raise ApiError(400, "`stop` must be a string, a list of strings or of token ids")
        try:
            return convert(out, SamplingParams)
        except ValidationError as exc:
            raise ApiError(400, f"bad sampling_params: {exc}") from None

    # -- info --------------------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        caps = self.backend_capabilities()
        return {
            "supported_models": [
                {
                    "model_name": name,
                    "max_context_length": self.config.max_context_length or caps.max_context_length,
                    "trainable": caps.supports_training,
                    "sampleable": True,
                }
                for name in caps.models
            ]
        }

    def snapshot(self) -> dict[str, Any]:
        """Counters and the applied-step log (for ``/crucible/v1/stats`` and tests)."""
        with self._lock:
            return {
                "sessions": len(self._sessions),
                "models": len(self._models),
                "samplers": len(self._samplers),
                "checkpoints": sorted(self._checkpoints),
                "futures": len(self.futures),
                "stats": dict(self.stats),
                "applied_steps": [
                    {"model_id": a.model_id, "seq_id": a.seq_id, "step": a.step}
                    for a in self.applied_steps
                ],
                "time": datetime.now(UTC).isoformat(),
            }

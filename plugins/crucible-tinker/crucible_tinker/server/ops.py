"""Tinker training operations mapped onto a crucible TrainingSession.

Each operation is checked against the request and the served backend when it
arrives (a ConfigError names what is wrong), then queued on its model
(:func:`~crucible_tinker.server.dispatch.enqueue`) as a *submit* function that
the model's dispatcher calls in ``seq_id`` order:

- ``create_model`` / ``load_weights`` with a session: open the crucible session
  (:func:`~crucible_tinker.server.sessions.open_training_session`), and for the
  latter ``load_state`` the checkpoint;
- ``forward_backward`` / ``forward``: ``session.forward_backward`` / ``forward``;
- ``optim_step``: ``session.optim_step(AdamParams)`` (each applied step is logged);
- ``save_weights``: ``session.save_state``; ``save_weights_for_sampler``:
  ``session.save_weights_for_sampler`` (optionally opening a sampling session);
  both register the checkpoint in the index before the SDK hears of it;
- ``save_weights_external``: ``session.save_weights_for_sampler`` too, registered as
  ``tinker://<run>/external_weights/<name>``, whose files
  :mod:`~crucible_tinker.server.downloads` hands out;
- ``load_weights`` into a model: ``session.load_state``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from crucible_core.contracts import Sampler
from crucible_core.errors import ConfigError, Conflict, UnsupportedError, ValidationError
from crucible_core.ir import convert
from crucible_core.ir.backend import (
    AdamParams,
    CheckpointRef,
    ForwardBackwardResult,
    OptimStepResult,
)
from crucible_core.ir.training import LoRA, Loss
from crucible_tinker.losses import NAMED_LOSSES, crucible_params
from crucible_tinker.server import ids
from crucible_tinker.server.checkpoint_index import CheckpointIndex, CheckpointRecord
from crucible_tinker.server.dispatch import Model, Op, enqueue
from crucible_tinker.server.errors import require_seq
from crucible_tinker.server.futures import JSON, PROTOBUF, FutureStore, Payload
from crucible_tinker.server.payloads import (
    FwdBwdRequest,
    encode_forward_backward_output,
)
from crucible_tinker.server.sampling import SamplerEntry, Sampling
from crucible_tinker.server.served import ServedBackend
from crucible_tinker.server.sessions import SessionTable, open_training_session
from crucible_tinker.server.wire import (
    CreateModelRequest,
    LoadWeightsRequest,
    LoraConfigBody,
    ModelRequest,
    OptimStepRequest,
    SaveWeightsExternalRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
)

__all__ = ["AppliedStep", "TrainingOps"]


@dataclass(frozen=True)
class AppliedStep:
    """One optimizer step the backend applied (the log tests check for duplicates)."""

    model_id: str
    seq_id: int
    step: int
    at: float


def _json(data: Mapping[str, Any]) -> Payload:
    return Payload(json.dumps(data).encode(), JSON)


class TrainingOps:
    """The training endpoints of one server."""

    def __init__(
        self,
        served: ServedBackend,
        sessions: SessionTable,
        checkpoints: CheckpointIndex,
        sampling: Sampling,
        futures: FutureStore,
        stats: dict[str, int],
    ) -> None:
        self.served = served
        self.sessions = sessions
        self.checkpoints = checkpoints
        self.sampling = sampling
        self.futures = futures
        self.stats = stats
        self._lock = threading.Lock()
        self.applied_steps: list[AppliedStep] = []

    def _enqueue(
        self, model: Model, seq_id: int, kind: str, submit: Callable[[Model], Any]
    ) -> dict[str, Any]:
        return enqueue(model, seq_id, kind, submit, self.futures, self.stats)

    def _open(self, model: Model, seed: int | None) -> None:
        model.session = open_training_session(self.served.backend, self.served.name, model, seed)

    # -- models ----------------------------------------------------------------

    def _resubmitted_creation(self, model: Model) -> dict[str, Any]:
        """The answer to a retried model creation: the original request's future."""
        self.stats["duplicate_submissions"] += 1
        rid = model.queue.seen(0)
        if rid is None:
            raise Conflict(f"model {model.model_id} is being created; retry")
        return {"request_id": rid, "model_id": model.model_id}

    def create_model(self, body: CreateModelRequest) -> dict[str, Any]:
        session_id = body.session_id
        self.sessions.session(session_id)
        self.served.check_base_model(body.base_model)
        if body.optimizer_config is not None and body.optimizer_config.type != "adamw":
            raise ConfigError("only the adamw optimizer is supported by this server")
        lora_raw = body.lora_config or LoraConfigBody()
        max_rank = self.served.max_lora_rank
        if lora_raw.rank > max_rank:
            raise ConfigError(
                f"lora_config.rank {lora_raw.rank} is above {max_rank}, the largest "
                f"rank the {self.served.name!r} backend is served with"
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
            raise ConfigError(f"bad lora_config: {exc}") from None
        seed = lora_raw.seed if lora_raw.seed is not None and lora_raw.seed >= 0 else None
        model, created = self.sessions.new_model(
            session_id, body.model_seq_id, body.base_model, lora
        )
        if not created:
            return self._resubmitted_creation(model)
        entry = self.futures.create("create_model")

        def submit(m: Model) -> Callable[[], Payload]:
            self._open(m, seed)
            return lambda: _json({"model_id": m.model_id, "type": "create_model"})

        model.queue.offer(0, entry.request_id, Op("create_model", 0, entry, submit))
        return {"request_id": entry.request_id, "model_id": model.model_id}

    def get_info(self, body: ModelRequest) -> dict[str, Any]:
        model = self.sessions.model(body.model_id)
        return {
            "type": "get_info",
            "model_id": model.model_id,
            "model_data": {
                "arch": f"crucible:{self.served.name}",
                "model_name": model.base_model,
                "tokenizer_id": self.served.tokenizer_id(model.base_model),
            },
            "is_lora": True,
            "lora_rank": model.lora["rank"],
            "model_name": model.base_model,
            "optimizer_config": {"type": "adamw"},
        }

    # -- forward / backward and the optimizer ------------------------------------

    def forward_backward(self, req: FwdBwdRequest) -> dict[str, Any]:
        model = self.sessions.model(req.model_id)
        self._check_batch_size(req)
        known = model.queue.seen(req.seq_id)
        if known is not None:
            self.stats["duplicate_submissions"] += 1
            return {"request_id": known, "model_id": model.model_id}
        kind = "forward" if req.forward_only else "forward_backward"

        def submit(m: Model) -> Callable[[], Payload]:
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
        within the context length (ConfigError otherwise)."""
        most = self.served.config.fwdbwd_max_chunk_len
        if len(req.tokens) > most:
            raise ConfigError(
                f"{len(req.tokens)} datums in one forward_backward request; this server takes "
                f"at most {most} (fwdbwd_max_chunk_len)"
            )
        limit = self.served.context_length
        if limit is None:
            return
        for i, toks in enumerate(req.tokens):
            if len(toks) > limit:
                raise ConfigError(
                    f"datum {i} has {len(toks)} tokens; the context length is {limit}"
                )

    def _loss(self, name: str, config: Mapping[str, float | str]) -> Loss:
        """crucible's loss of the same name, its params from ``config``
        (:func:`crucible_tinker.losses.crucible_params`)."""
        if name == "stable_reinforce":
            raise UnsupportedError(
                "loss 'stable_reinforce' is not supported by this server: Tinker's docs do not "
                "define its objective (what the stability info recorded at sampling holds, and "
                "how it and loss_fn_config.kl_coeff enter the loss), so it cannot be "
                "reproduced faithfully",
                hint=f"use one of {', '.join(NAMED_LOSSES)} (the cookbook: loss_fn='cispo', say)",
            )
        if name not in NAMED_LOSSES:
            raise UnsupportedError(
                f"loss {name!r} is not supported by this server "
                f"(supported: {', '.join(NAMED_LOSSES)})"
            )
        caps = self.served.capabilities()
        if name not in caps.losses:
            raise UnsupportedError(
                f"the {self.served.name!r} backend does not support the {name!r} loss "
                f"(it supports {', '.join(caps.losses)})"
            )
        return convert({"name": name, "params": crucible_params(name, config)}, Loss)

    def optim_step(self, body: OptimStepRequest) -> dict[str, Any]:
        model = self.sessions.model(body.model_id)
        seq_id = require_seq(body.seq_id, "seq_id")
        if body.adam_params is None:
            raise ConfigError("only adam_params are supported by this server")
        params_raw = body.adam_params.given()

        def submit(m: Model) -> Callable[[], Payload]:
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

    # -- checkpoints -----------------------------------------------------------------

    @staticmethod
    def _crucible_name(model: Model, name: str) -> str:
        # Backends may keep checkpoints of every model side by side: make names unique.
        return f"{model.model_id.replace(':', '-')}-{name}"

    def save_weights(self, body: SaveWeightsRequest) -> dict[str, Any]:
        model = self.sessions.model(body.model_id)
        seq_id = require_seq(body.seq_id, "seq_id")
        name = body.path or f"state-{seq_id}"
        try:
            path = ids.CheckpointPath.make(model.model_id, "state", name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if path.uri in self.checkpoints and not body.overwrite and model.queue.seen(seq_id) is None:
            raise Conflict(f"checkpoint {path.uri} exists (pass overwrite=True)")

        def submit(m: Model) -> Callable[[], Payload]:
            assert m.session is not None
            fut = m.session.save_state(self._crucible_name(m, path.name))

            def finish() -> Payload:
                ref: CheckpointRef = fut.result()
                self.checkpoints.register(CheckpointRecord(path.uri, ref, m.base_model, m.lora))
                return _json({"path": path.uri, "type": "save_weights"})

            return finish

        return self._enqueue(model, seq_id, "save_weights", submit)

    def save_weights_for_sampler(self, body: SaveWeightsForSamplerRequest) -> dict[str, Any]:
        model = self.sessions.model(body.model_id)
        seq_id = require_seq(body.seq_id, "seq_id")
        name = body.path
        sampling_seq = body.sampling_session_seq_id
        if name is None and sampling_seq is None:
            raise ConfigError("give `path` or `sampling_session_seq_id`")
        try:
            label = name if name is not None else f"sampler-s{sampling_seq}"
            path = ids.CheckpointPath.make(model.model_id, "sampler", label)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

        def submit(m: Model) -> Callable[[], Payload]:
            assert m.session is not None
            fut = m.session.save_weights_for_sampler(self._crucible_name(m, path.name))

            def finish() -> Payload:
                sampler: Sampler = fut.result()
                ref = sampler.checkpoint
                if ref is not None:
                    self.checkpoints.register(
                        CheckpointRecord(path.uri, ref, m.base_model, m.lora, sampler=sampler)
                    )
                if name is not None:
                    return _json({"path": path.uri, "type": "save_weights_for_sampler"})
                assert isinstance(sampling_seq, int)
                ssid = ids.sampling_session_id(m.session_id, sampling_seq)
                entry = SamplerEntry(ssid, sampler, m.base_model, path.uri)
                self.sampling.add(m.session_id, sampling_seq, entry)
                return _json({"sampling_session_id": ssid, "type": "save_weights_for_sampler"})

            return finish

        return self._enqueue(model, seq_id, "save_weights_for_sampler", submit)

    def save_weights_external(self, body: SaveWeightsExternalRequest) -> dict[str, Any]:
        """The model's weights as files other tools load (the backend's sampler checkpoint:
        a PEFT adapter for crucible-local), downloadable through external_weights_urls."""
        model = self.sessions.model(body.model_id)
        seq_id = require_seq(body.seq_id, "seq_id")
        if body.age_encryption_recipients:
            raise UnsupportedError(
                "save_weights_external: age encryption is not supported by this server",
                hint="omit age_encryption_recipients (the files are served on this host only)",
            )
        try:
            path = ids.CheckpointPath.make(model.model_id, "external", body.path)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

        def submit(m: Model) -> Callable[[], Payload]:
            assert m.session is not None
            fut = m.session.save_weights_for_sampler(self._crucible_name(m, f"ext-{path.name}"))

            def finish() -> Payload:
                sampler: Sampler = fut.result()
                ref = sampler.checkpoint
                if ref is None:
                    raise UnsupportedError("the backend's sampler exposes no checkpoint")
                self.checkpoints.register(CheckpointRecord(path.uri, ref, m.base_model, m.lora))
                return _json({"path": path.uri, "type": "save_weights_external"})

            return finish

        return self._enqueue(model, seq_id, "save_weights_external", submit)

    def load_weights(self, body: LoadWeightsRequest) -> dict[str, Any]:
        record = self.checkpoints.get(body.path)
        if body.session_id is not None:
            return self._create_from_state(body, body.session_id, record)
        if body.model_id is None:
            raise ConfigError("give `model_id` and `seq_id`, or `session_id` and `model_seq_id`")
        model = self.sessions.model(body.model_id)
        seq_id = require_seq(body.seq_id, "seq_id")

        def submit(m: Model) -> Callable[[], Payload]:
            assert m.session is not None
            fut = m.session.load_state(record.ref)

            def finish() -> Payload:
                fut.result()
                return _json({"path": record.uri, "model_id": m.model_id, "type": "load_weights"})

            return finish

        return self._enqueue(model, seq_id, "load_weights", submit)

    def _create_from_state(
        self, body: LoadWeightsRequest, session_id: str, record: CheckpointRecord
    ) -> dict[str, Any]:
        self.sessions.session(session_id)
        model_seq_id = require_seq(body.model_seq_id, "model_seq_id")
        if body.base_model is not None:
            self.served.check_base_model(body.base_model)
        base_model = body.base_model or record.base_model
        if record.ref.kind != "state":
            raise ConfigError(f"{record.uri} holds sampler weights; load a `weights` path")
        model, created = self.sessions.new_model(
            session_id, model_seq_id, str(base_model), record.lora
        )
        if not created:
            return self._resubmitted_creation(model)
        entry = self.futures.create("create_from_state")

        def submit(m: Model) -> Callable[[], Payload]:
            self._open(m, None)
            assert m.session is not None
            m.session.load_state(record.ref).result()
            return lambda: _json(
                {"model_id": m.model_id, "path": record.uri, "type": "load_weights"}
            )

        model.queue.offer(0, entry.request_id, Op("create_from_state", 0, entry, submit))
        return {"request_id": entry.request_id, "model_id": model.model_id}

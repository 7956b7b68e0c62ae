"""The table of SDK sessions and their training models, and how a model's crucible
session is opened.

A tinker *session* (``create_session``) groups the models and samplers of one
``ServiceClient``; it stays alive while the SDK heartbeats or uses it, and is
finished by the SDK or, after ``ServerConfig.session_ttl_s`` of silence, by
:meth:`SessionTable.reap`. Finishing a session closes its models (their
pending operations fail, their crucible sessions close).

A *model* is created once per ``(session_id, model_seq_id)``: a retried
creation finds the model already there (:meth:`SessionTable.new_model`
returns ``created=False``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from crucible_core.contracts import TrainingBackend, TrainingSession
from crucible_core.errors import NotFound
from crucible_core.ir import convert
from crucible_core.ir.training import TrainingJob
from crucible_tinker.server import ids
from crucible_tinker.server.dispatch import Model, close_model, start_workers
from crucible_tinker.server.errors import Gone

__all__ = ["Session", "SessionTable", "open_training_session", "training_job"]

log = logging.getLogger("crucible_tinker.server")


@dataclass
class Session:
    """One SDK session: when it was last heard from, and its models' ids."""

    session_id: str
    created: float
    last_seen: float
    finished: bool = False
    models: list[str] = field(default_factory=list[str])


def training_job(backend_name: str, model: Model, seed: int | None) -> TrainingJob:
    """The crucible TrainingJob of a tinker model (the data arrives over the wire)."""
    raw: dict[str, Any] = {
        "backend": backend_name,
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


def open_training_session(
    backend: TrainingBackend, backend_name: str, model: Model, seed: int | None
) -> TrainingSession:
    """The crucible session that trains ``model``: the one place the server calls
    ``backend.create_session`` (blocking; runs on the model's dispatcher).

    Its files (checkpoints of a file backend) go to
    ``$CRUCIBLE_HOME/tinker-server/models/<model id>``.
    """
    from crucible_core.records import paths

    run_dir = paths.crucible_home() / "tinker-server" / "models" / model.model_id.replace(":", "-")
    return backend.create_session(training_job(backend_name, model, seed), run_dir=run_dir)


class SessionTable:
    """Sessions and models by id; thread-safe."""

    def __init__(self, ttl_s: float, stats: dict[str, int]) -> None:
        self.ttl_s = ttl_s
        self.stats = stats
        self._lock = threading.RLock()
        self._sessions: dict[str, Session] = {}
        self._models: dict[str, Model] = {}
        self._closed = False

    def counts(self) -> tuple[int, int]:
        """``(sessions, models)`` ever created."""
        with self._lock:
            return len(self._sessions), len(self._models)

    def create(self) -> str:
        """A new session's id."""
        sid = ids.new_session_id()
        now = time.monotonic()
        with self._lock:
            self._sessions[sid] = Session(sid, now, now)
        return sid

    def session(self, session_id: str) -> Session:
        """A live session: NotFound if unknown, Gone if finished."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(f"unknown session {session_id!r}")
        if session.finished:
            raise Gone(f"session {session_id!r} has finished")
        return session

    def heartbeat(self, session_id: str) -> None:
        """Keep ``session_id`` alive."""
        self.session(session_id).last_seen = time.monotonic()
        self.stats["heartbeats"] += 1

    def reap(self, now: float | None = None) -> list[str]:
        """Finish sessions silent for longer than ``ttl_s`` (no heartbeat and no request on
        their models): their models are closed. Returns the sessions finished."""
        moment = time.monotonic() if now is None else now
        with self._lock:
            stale = [
                s.session_id
                for s in self._sessions.values()
                if not s.finished and moment - s.last_seen > self.ttl_s
            ]
        for sid in stale:
            log.info("session %s sent nothing for %.0f s: finishing it", sid, self.ttl_s)
            self.finish(sid)
        return stale

    def finish(self, session_id: str) -> None:
        """Finish ``session_id`` and close its models (NotFound if unknown; idempotent)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise NotFound(f"unknown session {session_id!r}")
            if session.finished:
                return
            session.finished = True
            models = [self._models[m] for m in session.models if m in self._models]
        for model in models:
            close_model(model, f"session {session_id} finished")

    def new_model(
        self, session_id: str, model_seq_id: int, base_model: str, lora: dict[str, Any]
    ) -> tuple[Model, bool]:
        """The model ``(session_id, model_seq_id)`` with its workers started, and whether it
        was created now (False: a retried creation, the model exists)."""
        mid = ids.model_id(session_id, model_seq_id)
        with self._lock:
            existing = self._models.get(mid)
            if existing is not None:
                return existing, False
            model = Model(mid, session_id, model_seq_id, base_model, lora)
            self._models[mid] = model
            self._sessions[session_id].models.append(mid)
        start_workers(model)
        return model, True

    def model(self, model_id: str) -> Model:
        """A live model (a request on it keeps its session alive): NotFound if unknown,
        Gone if its session finished."""
        with self._lock:
            model = self._models.get(model_id)
            session = self._sessions.get(model.session_id) if model is not None else None
        if model is None:
            raise NotFound(f"unknown model {model_id!r}")
        if session is not None:
            session.last_seen = time.monotonic()
        if model.queue.closed:
            raise Gone(f"model {model_id!r} is closed (its session finished)")
        return model

    def close(self) -> None:
        """Close every model and join its workers (the server is stopping)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            models = list(self._models.values())
        for model in models:
            close_model(model, "the server is shutting down")
        for model in models:
            for t in model.threads:
                t.join(timeout=10)

"""The server's engine: one object that composes the parts and answers every endpoint.

Only the public contract (:mod:`crucible_core.contracts`) of the served
backend is used: a model is a ``TrainingSession`` made by
``backend.create_session(TrainingJob)``; a sampler comes from
``save_weights_for_sampler`` or ``backend.load_sampler``.

The parts, one job each:

- :mod:`~crucible_tinker.server.served`: what the backend can do; bounds requests;
- :mod:`~crucible_tinker.server.sessions`: SDK sessions and their models;
- :mod:`~crucible_tinker.server.dispatch`: each model's worker threads and ordering;
- :mod:`~crucible_tinker.server.ops`: tinker training operations -> session calls;
- :mod:`~crucible_tinker.server.sampling`: sampling sessions and samples;
- :mod:`~crucible_tinker.server.checkpoint_index`: checkpoints by path, persisted durably;
- :mod:`~crucible_tinker.server.downloads`: signed URLs of a checkpoint's files.

The engine knows no HTTP: it raises crucible's typed errors
(:mod:`crucible_tinker.server.errors`), and :mod:`~crucible_tinker.server.app`
alone maps them to statuses. Handlers run on the server's event loop and
never block on a model, except the few the app runs on a worker thread
(``create_sampling_session``, ``get_info``, ``finish_session``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crucible_core.contracts import TrainingBackend
from crucible_core.ir.backend import Capabilities
from crucible_tinker.server.checkpoint_index import CheckpointIndex
from crucible_tinker.server.config import ServerConfig
from crucible_tinker.server.dispatch import classify
from crucible_tinker.server.downloads import Downloads
from crucible_tinker.server.futures import FutureStore
from crucible_tinker.server.ops import AppliedStep, TrainingOps
from crucible_tinker.server.payloads import (
    FwdBwdRequest,
)
from crucible_tinker.server.sampling import Sampling
from crucible_tinker.server.served import ServedBackend
from crucible_tinker.server.sessions import SessionTable
from crucible_tinker.server.wire import (
    CreateModelRequest,
    CreateSamplingSessionRequest,
    EmptyRequest,
    LoadWeightsRequest,
    ModelRequest,
    OptimStepRequest,
    SampleRequest,
    SaveWeightsExternalRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
)

__all__ = ["AppliedStep", "Engine", "classify"]


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
        self.stats: dict[str, int] = {
            "duplicate_submissions": 0,
            "out_of_order_arrivals": 0,
            "telemetry_batches": 0,
            "heartbeats": 0,
        }
        self.served = ServedBackend(backend, backend_name, config)
        self.sessions = SessionTable(config.session_ttl_s, self.stats)
        self.checkpoints = CheckpointIndex(state_dir)
        self.downloads = Downloads(self.checkpoints)
        self.sampling = Sampling(self.served, self.sessions, self.checkpoints, futures, self.stats)
        self.training = TrainingOps(
            self.served, self.sessions, self.checkpoints, self.sampling, futures, self.stats
        )

    def close(self) -> None:
        """Stop every model's threads, close its crucible session, stop the sampling pool."""
        self.sessions.close()
        self.sampling.close()

    # -- the served backend --------------------------------------------------------

    def backend_capabilities(self) -> Capabilities:
        """The served backend's capabilities (asked once: they bound every request)."""
        return self.served.capabilities()

    @property
    def context_length(self) -> int | None:
        """The longest sequence accepted: the configured one, else the backend's."""
        return self.served.context_length

    @property
    def max_lora_rank(self) -> int:
        """The largest LoRA rank accepted."""
        return self.served.max_lora_rank

    def capabilities(self) -> dict[str, Any]:
        return self.served.server_capabilities()

    # -- sessions --------------------------------------------------------------------

    def create_session(self, body: EmptyRequest) -> dict[str, Any]:
        return {"type": "create_session", "session_id": self.sessions.create()}

    def heartbeat(self, session_id: str) -> dict[str, Any]:
        self.sessions.heartbeat(session_id)
        return {"type": "session_heartbeat"}

    def finish_session(self, session_id: str) -> dict[str, Any]:
        self.sessions.finish(session_id)
        return {}

    def reap(self, now: float | None = None) -> list[str]:
        """Finish sessions silent for longer than ``config.session_ttl_s``."""
        return self.sessions.reap(now)

    # -- training ----------------------------------------------------------------------

    @property
    def applied_steps(self) -> list[AppliedStep]:
        """Every optimizer step the backend applied, in order."""
        return self.training.applied_steps

    def create_model(self, body: CreateModelRequest) -> dict[str, Any]:
        return self.training.create_model(body)

    def get_info(self, body: ModelRequest) -> dict[str, Any]:
        return self.training.get_info(body)

    def forward_backward(self, req: FwdBwdRequest) -> dict[str, Any]:
        return self.training.forward_backward(req)

    def optim_step(self, body: OptimStepRequest) -> dict[str, Any]:
        return self.training.optim_step(body)

    def save_weights(self, body: SaveWeightsRequest) -> dict[str, Any]:
        return self.training.save_weights(body)

    def save_weights_for_sampler(self, body: SaveWeightsForSamplerRequest) -> dict[str, Any]:
        return self.training.save_weights_for_sampler(body)

    def save_weights_external(self, body: SaveWeightsExternalRequest) -> dict[str, Any]:
        return self.training.save_weights_external(body)

    def external_weights_urls(
        self, run_id: str, checkpoint_id: str, base_url: str
    ) -> dict[str, Any]:
        return self.downloads.urls(run_id, checkpoint_id, base_url)

    def load_weights(self, body: LoadWeightsRequest) -> dict[str, Any]:
        return self.training.load_weights(body)

    # -- sampling ----------------------------------------------------------------------

    def create_sampling_session(self, body: CreateSamplingSessionRequest) -> dict[str, Any]:
        """Blocking (may load a model): call from a worker thread."""
        return self.sampling.create_session(body)

    def get_sampler(self, sampling_session_id: str) -> dict[str, Any]:
        return self.sampling.get_sampler(sampling_session_id)

    def asample(self, body: SampleRequest) -> dict[str, Any]:
        return self.sampling.asample(body)

    # -- info ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters and the applied-step log (for ``/crucible/v1/stats`` and tests)."""
        sessions, models = self.sessions.counts()
        return {
            "sessions": sessions,
            "models": models,
            "samplers": len(self.sampling),
            "checkpoints": self.checkpoints.uris(),
            "futures": len(self.futures),
            "stats": dict(self.stats),
            "applied_steps": [
                {"model_id": a.model_id, "seq_id": a.seq_id, "step": a.step}
                for a in list(self.applied_steps)
            ],
            "time": datetime.now(UTC).isoformat(),
        }

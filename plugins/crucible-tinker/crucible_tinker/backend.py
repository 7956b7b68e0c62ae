"""The ``tinker`` backend: crucible's training and inference contracts over the tinker SDK.

Each crucible call maps to one SDK call and returns at once with a future, so
a loop can submit step k+1 before reading step k (Tinker runs on a clock; a
loop that waits for each result pays a round trip per call):

- ``create_session(job)``: ``ServiceClient.create_lora_training_client``
- ``forward`` / ``forward_backward``: ``TrainingClient.forward`` / ``forward_backward``;
  a custom loss (``Loss(name="custom", fn=...)``) goes through
  ``TrainingClient.forward_backward_custom``
- ``optim_step(AdamParams)``: ``TrainingClient.optim_step(types.AdamParams)``
- ``save_state(name)``: ``TrainingClient.save_state`` (``tinker://<run>/weights/<name>``)
- ``load_state(ref)``: ``ServiceClient.create_training_client_from_state_with_optimizer``
- ``save_weights_for_sampler(name)``: ``TrainingClient.save_weights_for_sampler`` then
  ``ServiceClient.create_sampling_client(model_path=...)``
- ``load_sampler(model, ref)``: ``ServiceClient.create_sampling_client``
- ``Sampler.sample`` / ``complete``: ``SamplingClient.sample``

:class:`TinkerBackend` only composes the parts, one job each:
:mod:`~crucible_tinker.client` (the ServiceClient, timeouts, error mapping),
:mod:`~crucible_tinker.conversion` (IR <-> tinker types),
:mod:`~crucible_tinker.training` (the training session),
:mod:`~crucible_tinker.sampler` (the sampler) and
:mod:`~crucible_tinker.tokenizers` (tokenizers without a hub).
Importing it imports neither ``tinker`` nor ``numpy``; the first call does.

Who retries what: the SDK retries everything transient itself -- its HTTP
layer retries connection errors, 408/409/429 and 5xx (up to 10 times, honouring
``retry-after``), its outer loop retries for up to 5 minutes, and its futures
re-poll until a result arrives. This backend never retries on top of that: an
error that reaches it has already exhausted the SDK's budget, so it is raised
as a :class:`~crucible_core.errors.BackendError` with ``retryable=False``
(the scheduler must not multiply the SDK's retries by its own).
Auth failures are :class:`~crucible_core.errors.AuthError`.

The API key (see :mod:`crucible_tinker.credentials`) is handed to the SDK and
nowhere else; every error message that quotes the SDK is redacted.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from crucible_core.contracts import Tokenizer
from crucible_core.errors import ConfigError, DeadlineExceeded, UnsupportedError
from crucible_core.ir.backend import (
    Capabilities,
    CheckpointRef,
    Completion,
    Health,
    Prompt,
    SamplingParams,
    StreamChunk,
)
from crucible_core.ir.training import ModelSpec, TrainingJob
from crucible_tinker.client import Connection, map_error
from crucible_tinker.conversion import completion_text
from crucible_tinker.credentials import resolve_api_key
from crucible_tinker.export import EXPORT_FORMATS
from crucible_tinker.plugin import CAPABILITIES
from crucible_tinker.sampler import TinkerSampler, open_sampler
from crucible_tinker.tokenizers import find_tokenizer
from crucible_tinker.training import TinkerTrainingSession, open_training_session

__all__ = [
    "TinkerBackend",
    "TinkerSampler",
    "TinkerTrainingSession",
    "completion_text",
    "map_error",
]

#: Defaults for the tokenizer_dir / tokenizer_backend options.
TOKENIZER_DIR_ENV = "CRUCIBLE_TINKER_TOKENIZER_DIR"
TOKENIZER_BACKEND_ENV = "CRUCIBLE_TINKER_TOKENIZER_BACKEND"


class TinkerBackend:
    """Training and inference through the tinker SDK (Tinker, or any compatible server).

    Options (all keyword, all optional):

    - ``base_url``: the server (else ``$TINKER_BASE_URL``, else the SDK's default);
    - ``api_key`` / ``api_key_file``: see :mod:`crucible_tinker.credentials`
      (``$TINKER_API_KEY`` or a 0600 key file);
    - ``tokenizer_dir`` / ``tokenizer_backend`` / ``tokenizer_backend_options``:
      where tokenizers come from without a hub (:mod:`crucible_tinker.tokenizers`);
    - ``model``: the base model :meth:`complete` samples from (inference use);
    - ``timeout``: seconds to wait for blocking calls (client creation, a
      checkpoint load, :meth:`complete`); default 600;
    - ``user_metadata`` / ``project_id``: passed to the SDK's ServiceClient.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_file: str | None = None,
        tokenizer_dir: str | None = None,
        tokenizer_backend: str | None = None,
        tokenizer_backend_options: Mapping[str, Any] | None = None,
        model: str | None = None,
        timeout: float = 600.0,
        user_metadata: Mapping[str, str] | None = None,
        project_id: str | None = None,
        costs: Mapping[str, Any] | None = None,
        throughput_tokens_per_s: float | None = None,
    ) -> None:
        from crucible_core.ir.backend import Costs
        from crucible_core.ir.codec import convert

        # Prices and pace are the account's, not the SDK's: declared in the backend's
        # configuration ([backend.options] costs = {train_per_mtok = ...}), read by
        # `crucible plan` for its estimates and by the loop for max_cost budgets.
        self.costs: Costs | None = convert(dict(costs), Costs) if costs is not None else None
        self.throughput_tokens_per_s = throughput_tokens_per_s
        self.conn = Connection(
            base_url=base_url,
            api_key=resolve_api_key(api_key, api_key_file),
            timeout=timeout,
            user_metadata=user_metadata,
            project_id=project_id,
        )
        self.tokenizer_dir = tokenizer_dir or os.environ.get(TOKENIZER_DIR_ENV) or None
        self.tokenizer_backend = tokenizer_backend or os.environ.get(TOKENIZER_BACKEND_ENV) or None
        self.tokenizer_backend_options = dict(tokenizer_backend_options or {})
        self.model = model
        self._lock = threading.RLock()
        self._tokenizers: dict[str, Tokenizer] = {}
        self._samplers: dict[str, TinkerSampler] = {}

    @property
    def base_url(self) -> str | None:
        return self.conn.base_url

    @property
    def timeout(self) -> float:
        return self.conn.timeout

    def __repr__(self) -> str:
        return f"TinkerBackend(base_url={self.base_url!r}, api_key={self.conn.api_key!r})"

    # -- contract: capabilities and tokenizers -------------------------------------

    def capabilities(self) -> Capabilities:
        """The static capabilities (the server decides which models exist)."""
        import msgspec

        caps = CAPABILITIES
        if self.model is not None:
            caps = msgspec.structs.replace(caps, models=[self.model])
        if self.costs is not None:
            caps = msgspec.structs.replace(caps, costs=self.costs)
        if self.throughput_tokens_per_s is not None:
            caps = msgspec.structs.replace(
                caps, throughput_tokens_per_s=self.throughput_tokens_per_s
            )
        return caps

    def get_tokenizer(self, model: ModelSpec) -> Tokenizer:
        key = f"{model.name}|{model.tokenizer}|{model.path}"
        with self._lock:
            cached = self._tokenizers.get(key)
        if cached is not None:
            return cached
        tok = find_tokenizer(
            model,
            tokenizer_dir=self.tokenizer_dir,
            tokenizer_backend=self.tokenizer_backend,
            tokenizer_backend_options=self.tokenizer_backend_options,
            served_backend_name=self.conn.served_backend_name,
        )
        with self._lock:
            self._tokenizers.setdefault(key, tok)
        return tok

    # -- contract: training ------------------------------------------------------------

    def create_session(
        self, job: TrainingJob, *, run_dir: os.PathLike[str] | str | None = None
    ) -> TinkerTrainingSession:
        """A LoRA training client for ``job``; ``run_dir`` is unused (checkpoints live on
        the Tinker service, addressed by ``tinker://`` paths)."""
        tokenizer = self.get_tokenizer(job.model_spec)
        return open_training_session(self.conn, job, tokenizer, self.load_sampler)

    def load_sampler(self, model: ModelSpec, checkpoint: CheckpointRef | None) -> TinkerSampler:
        return open_sampler(self.conn, self.get_tokenizer(model), model, checkpoint)

    # -- ExportingBackend (optional; crucible export) -------------------------------------

    #: The ``crucible export --format`` values (written by crucible-local, see
    #: :mod:`crucible_tinker.export`).
    export_formats: tuple[str, ...] = EXPORT_FORMATS

    def check_export(self, model: ModelSpec, fmt: str, *, lora: bool = True) -> None:
        """Refuse what crucible-local cannot write for ``model`` (it writes every format)."""
        from crucible_tinker.export import local_export

        local_export().check_export(model, fmt, lora=lora)

    def export(
        self, model: ModelSpec, checkpoint: CheckpointRef, fmt: str, out: Path, *, final: Path
    ) -> dict[str, Any]:
        """Download the checkpoint's external weights and export them (crucible-local)."""
        from crucible_tinker.export import export

        return export(self.conn, model, checkpoint, fmt, Path(out), final=Path(final))

    def verify_export(
        self, model: ModelSpec, checkpoint: CheckpointRef, fmt: str, out: Path
    ) -> dict[str, Any]:
        """crucible-local's verification against the downloaded weights."""
        from crucible_tinker.export import verify

        return verify(self.conn, model, checkpoint, fmt, Path(out))

    # -- contract: inference -----------------------------------------------------------

    def _default_sampler(self) -> TinkerSampler:
        if not self.model:
            raise ConfigError(
                "the tinker backend needs the option `model` (a base model name) to complete "
                "prompts",
            )
        with self._lock:
            sampler = self._samplers.get(self.model)
        if sampler is None:
            sampler = self.load_sampler(ModelSpec(name=self.model), None)
            with self._lock:
                sampler = self._samplers.setdefault(self.model, sampler)
        return sampler

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        if params.n != 1:
            raise UnsupportedError(
                f"tinker: params.n = {params.n}, but complete returns one completion",
                hint="set n = 1, or use a Sampler (backend.load_sampler) for several",
            )
        sampler = self._default_sampler()
        future = sampler.sample(prompt, params)
        try:
            return future.result(self.timeout)[0]
        except TimeoutError:
            raise DeadlineExceeded(
                f"tinker: sampling did not finish within {self.timeout:.0f} s", retryable=False
            ) from None

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        """Tinker does not stream: one chunk with the whole completion."""
        c = self.complete(prompt, params)
        yield StreamChunk(
            text=c.text,
            tokens=c.tokens,
            logprobs=c.logprobs,
            finish_reason=c.finish_reason,
            backend_id=c.backend_id,
        )

    def health_check(self) -> Health:
        return self.conn.health_check()

    def metrics(self) -> Mapping[str, float]:
        return dict(self.conn.counters)

    def close(self) -> None:
        """Finish the SDK session (its heartbeats stop) and release threads."""
        self.conn.close()

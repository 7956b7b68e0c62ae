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

import contextlib
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import tinker
from tinker import types

from crucible_core.contracts import Tokenizer
from crucible_core.errors import (
    AuthError,
    BackendError,
    ConfigError,
    CrucibleError,
    DeadlineExceeded,
    NotFound,
    UnsupportedError,
)
from crucible_core.ir.backend import (
    AdamParams,
    Capabilities,
    CheckpointRef,
    Completion,
    Datum,
    ForwardBackwardResult,
    Health,
    OptimStepResult,
    Prompt,
    SamplingParams,
    StreamChunk,
    Usage,
)
from crucible_core.ir.training import AdamW, Full, LoRA, Loss, ModelSpec, QLoRA, TrainingJob
from crucible_tinker.credentials import Secret, redact, refused_key_hint, resolve_api_key
from crucible_tinker.plugin import CAPABILITIES
from crucible_tinker.tokenizers import HFTokenizer, render_messages

__all__ = ["TinkerBackend", "TinkerSampler", "TinkerTrainingSession", "completion_text"]

log = logging.getLogger("crucible_tinker")

T = TypeVar("T")
U = TypeVar("U")

_NAMED_LOSSES = ("cross_entropy", "importance_sampling", "ppo")
#: Defaults for the tokenizer_dir / tokenizer_backend options.
TOKENIZER_DIR_ENV = "CRUCIBLE_TINKER_TOKENIZER_DIR"
TOKENIZER_BACKEND_ENV = "CRUCIBLE_TINKER_TOKENIZER_BACKEND"


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to its first stop string, and whether one was found.

    The server stops on its own decoding of the tokens, which may differ
    from this tokenizer's (special tokens rendered or skipped), so the text
    is cut here too: a completion's text never contains a stop string.
    """
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


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
        self.base_url = base_url
        self._api_key: Secret = resolve_api_key(api_key, api_key_file)
        self.tokenizer_dir = tokenizer_dir or os.environ.get(TOKENIZER_DIR_ENV) or None
        self.tokenizer_backend = tokenizer_backend or os.environ.get(TOKENIZER_BACKEND_ENV) or None
        self.tokenizer_backend_options = dict(tokenizer_backend_options or {})
        self.model = model
        self.timeout = float(timeout)
        self.user_metadata = dict(user_metadata or {})
        self.project_id = project_id
        self._lock = threading.RLock()
        self._service: tinker.ServiceClient | None = None
        self._tokenizers: dict[str, Tokenizer] = {}
        self._samplers: dict[str, TinkerSampler] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="crucible-tinker")
        self._metrics: dict[str, float] = {
            "requests": 0.0,
            "errors": 0.0,
            "completion_tokens": 0.0,
            "prompt_tokens": 0.0,
            "latency_ms_total": 0.0,
        }
        self._closed = False

    def __repr__(self) -> str:
        return f"TinkerBackend(base_url={self.base_url!r}, api_key={self._api_key!r})"

    # -- plumbing ----------------------------------------------------------------

    def error(self, exc: BaseException, what: str) -> CrucibleError:
        """An SDK exception as a crucible error, with the API key redacted from its message."""
        return map_error(exc, what, self._api_key)

    def blocking(self, fn: Callable[[], T], what: str, timeout: float | None = None) -> T:
        """Run an SDK call that may block without a timeout of its own, bounded by ``timeout``."""
        limit = self.timeout if timeout is None else timeout
        # A thread of its own, not the pool: chained calls running on the pool (a sampler
        # opened after a save) call this too, and must never wait on a pool they fill.
        future: ConcurrentFuture[T] = ConcurrentFuture()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name="crucible-tinker-call", daemon=True).start()
        try:
            return future.result(limit)
        except TimeoutError:
            raise DeadlineExceeded(
                f"tinker: {what} did not finish within {limit:.0f} s",
                hint="check base_url and that the server is up; raise the backend option timeout",
                retryable=False,
            ) from None
        except CrucibleError:
            raise
        except BaseException as exc:
            raise self.error(exc, what) from None

    def service(self) -> tinker.ServiceClient:
        """The SDK ServiceClient (made on first use; its session starts with the first call)."""
        with self._lock:
            if self._closed:
                raise BackendError("the tinker backend is closed", retryable=False)
            if self._service is None:
                self._service = tinker.ServiceClient(
                    user_metadata=self.user_metadata or None,
                    project_id=self.project_id,
                    base_url=self.base_url,
                    api_key=self._api_key.reveal(),
                )
            return self._service

    def then(
        self, source: ConcurrentFuture[T], fn: Callable[[T], U], what: str
    ) -> ConcurrentFuture[U]:
        """A future of ``fn(result)``; SDK errors become crucible errors (redacted)."""
        out: ConcurrentFuture[U] = ConcurrentFuture()

        def done(f: ConcurrentFuture[T]) -> None:
            if f.cancelled():
                out.cancel()
                return
            exc = f.exception()
            if exc is not None:
                self._metrics["errors"] += 1
                out.set_exception(exc if isinstance(exc, CrucibleError) else self.error(exc, what))
                return
            try:
                out.set_result(fn(f.result()))
            except BaseException as err:
                out.set_exception(err if isinstance(err, CrucibleError) else self.error(err, what))

        source.add_done_callback(done)
        return out

    def submit(self, fn: Callable[[], T]) -> ConcurrentFuture[T]:
        """Run ``fn`` on the backend's small thread pool (chained SDK calls)."""
        return self._pool.submit(fn)

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
        tok = self._find_tokenizer(model)
        with self._lock:
            self._tokenizers.setdefault(key, tok)
        return tok

    def _find_tokenizer(self, model: ModelSpec) -> Tokenizer:
        from pathlib import Path

        if self.tokenizer_dir:
            return HFTokenizer(self.tokenizer_dir)
        for candidate in (model.tokenizer, model.path):
            if candidate and Path(candidate).expanduser().is_dir():
                return HFTokenizer(candidate)
        import crucible_core

        if self.tokenizer_backend:
            other = crucible_core.get_backend(
                self.tokenizer_backend, **self.tokenizer_backend_options
            )
            return other.get_tokenizer(model)
        served = self._served_backend()
        if served is not None:
            return crucible_core.get_backend(served).get_tokenizer(model)
        raise ConfigError(
            f"the tinker backend has no tokenizer for {model.name!r} "
            "(the SDK's own tokenizer download needs a model hub)",
            hint="set the backend option tokenizer_dir to a local tokenizer directory, set "
            "model_spec.tokenizer to one, or tokenizer_backend to a registered backend with the "
            'same model (e.g. "local" when the server is `crucible serve-tinker --backend local`)',
        )

    def _served_backend(self) -> str | None:
        """The crucible backend behind a crucible-tinker server, when this process has it too.

        A Tinker-compatible server started by ``crucible serve-tinker`` names its
        backend at ``/crucible/v1/info``; any other server (Tinker itself) does not.
        """
        import httpx
        from tinker.lib.base_url import resolve_base_url

        import crucible_core

        url = resolve_base_url(self.base_url).rstrip("/") + "/crucible/v1/info"
        try:
            response = httpx.get(
                url, headers={"X-API-Key": self._api_key.reveal()}, timeout=min(10.0, self.timeout)
            )
        except httpx.HTTPError:
            return None
        if response.status_code in (401, 403):
            # Said now: every later call would be refused too, and "no tokenizer" would hide it.
            raise AuthError(
                f"tinker: {resolve_base_url(self.base_url)} refused the API key "
                f"(HTTP {response.status_code})",
                hint=refused_key_hint(self._api_key),
            )
        try:
            name = response.json().get("backend") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            return None
        if not isinstance(name, str) or name == "tinker":
            return None
        known = {r.name for r in crucible_core.list_registrations("backend")}
        return name if name in known else None

    # -- contract: training ------------------------------------------------------------

    def create_session(
        self, job: TrainingJob, *, run_dir: os.PathLike[str] | str | None = None
    ) -> TinkerTrainingSession:
        """A LoRA training client for ``job``; ``run_dir`` is unused (checkpoints live on
        the Tinker service, addressed by ``tinker://`` paths)."""
        adapter = job.adapter_config
        if isinstance(adapter, QLoRA):
            raise UnsupportedError(
                "the tinker backend cannot train QLoRA adapters",
                hint='use adapter_config = {kind = "lora"}; Tinker trains LoRA on full-precision '
                "base weights",
            )
        if isinstance(adapter, Full):
            raise UnsupportedError(
                "the tinker backend cannot do full fine-tuning (the SDK only creates LoRA "
                "training clients)",
                hint='use adapter_config = {kind = "lora"}',
            )
        train_attn, train_mlp, train_unembed = lora_groups(adapter)
        if not isinstance(job.learning_config.optimizer, AdamW):
            raise UnsupportedError(
                "the tinker backend only runs AdamW (Tinker's optimizer), not SGD",
                hint='use learning_config.optimizer = {name = "adamw"}',
            )
        check_loss(job.learning_config.loss)
        tokenizer = self.get_tokenizer(job.model_spec)
        service = self.service()
        metadata = {"crucible_job_id": job.job_id} if job.job_id else None

        def create() -> Any:
            return service.create_lora_training_client(
                base_model=job.model_spec.name,
                rank=adapter.rank,
                seed=job.learning_config.seed,
                train_mlp=train_mlp,
                train_attn=train_attn,
                train_unembed=train_unembed,
                user_metadata=metadata,
            ).result()

        client = self.blocking(create, f"creating a LoRA training client for {job.model_spec.name}")
        return TinkerTrainingSession(self, client, job, tokenizer)

    def load_sampler(self, model: ModelSpec, checkpoint: CheckpointRef | None) -> TinkerSampler:
        tokenizer = self.get_tokenizer(model)
        service = self.service()
        if checkpoint is None:

            def create() -> Any:
                return service.create_sampling_client(base_model=model.name).result()

            client = self.blocking(create, f"creating a sampler for {model.name}")
            return TinkerSampler(self, client, tokenizer, None, model.name)
        if checkpoint.kind != "sampler" or not checkpoint.uri.startswith("tinker://"):
            raise ConfigError(
                f"load_sampler needs a tinker:// sampler checkpoint, got {checkpoint.kind} "
                f"{checkpoint.uri!r}",
                hint="use the CheckpointRef of save_weights_for_sampler",
            )

        def create_from_path() -> Any:
            return service.create_sampling_client(model_path=checkpoint.uri).result()

        client = self.blocking(create_from_path, f"creating a sampler for {checkpoint.uri}")
        return TinkerSampler(self, client, tokenizer, checkpoint, model.name)

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
        import httpx
        from tinker.lib.base_url import resolve_base_url

        url = resolve_base_url(self.base_url).rstrip("/") + "/api/v1/healthz"
        start = time.perf_counter()
        try:
            response = httpx.get(url, timeout=min(10.0, self.timeout))
        except httpx.HTTPError as exc:
            return Health(ok=False, detail=redact(f"{type(exc).__name__}: {exc}", [self._api_key]))
        latency = (time.perf_counter() - start) * 1000
        ok = response.status_code == 200
        return Health(ok=ok, detail=f"HTTP {response.status_code}", latency_ms=latency)

    def metrics(self) -> Mapping[str, float]:
        return dict(self._metrics)

    def record(self, completions: Sequence[Completion], latency_ms: float) -> None:
        m = self._metrics
        m["requests"] += 1
        m["latency_ms_total"] += latency_ms
        for c in completions:
            m["completion_tokens"] += c.usage.completion_tokens
            m["prompt_tokens"] += c.usage.prompt_tokens

    def close(self) -> None:
        """Finish the SDK session (its heartbeats stop) and release threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            service = self._service
            self._service = None
        if service is not None:
            try:
                service.close("success").result(timeout=min(30.0, self.timeout))
            except Exception as exc:  # the session ends server-side when heartbeats stop
                log.warning("closing the tinker session failed: %s", self.error(exc, "close"))
        self._pool.shutdown(wait=False, cancel_futures=True)


_ATTENTION = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "qkv_proj",
        "query",
        "key",
        "value",
        "out_proj",
        "wq",
        "wk",
        "wv",
        "wo",
        "c_attn",
        "attn",
    }
)
_MLP = frozenset(
    {
        "gate_proj",
        "up_proj",
        "down_proj",
        "fc1",
        "fc2",
        "c_fc",
        "w1",
        "w2",
        "w3",
        "mlp",
        "dense_h_to_4h",
        "dense_4h_to_h",
        "gate_up_proj",
    }
)
_UNEMBED = frozenset({"lm_head", "unembed", "embed_out"})


def lora_groups(adapter: LoRA) -> tuple[bool, bool, bool]:
    """``(train_attn, train_mlp, train_unembed)`` for Tinker, which adapts whole layer groups.

    ``target_modules`` choose groups (``q_proj`` etc. the attention layers,
    ``gate_proj``/``up_proj``/``down_proj`` etc. the MLP, ``lm_head`` the
    unembedding, ``all-linear`` the attention and MLP layers); the ``train_*``
    flags then remove (``train_attn``/``train_mlp``) or add (``train_unembed``)
    groups, as crucible-local reads them. ``alpha``, ``dropout`` and ``bias``
    are not settable on Tinker and are ignored.
    """
    attn = mlp = unembed = False
    for name in adapter.target_modules:
        if name == "all-linear":
            attn = mlp = True
        elif name in _ATTENTION or "attn" in name or "attention" in name:
            attn = True
        elif name in _MLP:
            mlp = True
        elif name in _UNEMBED:
            unembed = True
        else:
            raise UnsupportedError(
                f"the tinker backend cannot target {name!r}: Tinker adapts whole layer groups",
                hint="name attention layers (q_proj, k_proj, v_proj, o_proj), MLP layers "
                "(gate_proj, up_proj, down_proj), lm_head, or 'all-linear'",
            )
    groups = (
        attn and adapter.train_attn,
        mlp and adapter.train_mlp,
        unembed or adapter.train_unembed,
    )
    if not any(groups):
        raise ConfigError(
            f"LoRA adapts nothing: target_modules {adapter.target_modules} with train_attn="
            f"{adapter.train_attn} and train_mlp={adapter.train_mlp}"
        )
    return groups


def check_loss(loss: Loss) -> None:
    """UnsupportedError unless ``loss`` is one the backend can run."""
    if loss.name == "custom":
        return
    if loss.name not in _NAMED_LOSSES:
        raise UnsupportedError(
            f"the tinker backend has no named loss {loss.name!r}",
            hint=f"use one of {', '.join(_NAMED_LOSSES)}, or a custom loss "
            '(name = "custom", fn = "pkg.module:function") computed from logprobs',
        )


def map_error(exc: BaseException, what: str, secret: Secret | None) -> CrucibleError:
    """A tinker SDK exception as a crucible error (never retryable: the SDK already retried)."""
    if isinstance(exc, CrucibleError):
        return exc
    text = redact(f"{type(exc).__name__}: {exc}", [secret])
    message = f"tinker: {what} failed: {text}"
    if isinstance(exc, tinker.AuthenticationError | tinker.PermissionDeniedError):
        return AuthError(message, hint=refused_key_hint(secret))
    if isinstance(exc, tinker.NotFoundError):
        return NotFound(message)
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(message, retryable=False)
    if isinstance(exc, tinker.RequestFailedError):
        category = str(getattr(exc, "category", "unknown"))
        return BackendError(
            message, retryable=False, category=category, request_id=str(exc.request_id)
        )
    if isinstance(exc, tinker.APIConnectionError):
        return BackendError(message, hint="is the server up and base_url right?", retryable=False)
    if isinstance(exc, tinker.APIStatusError):
        # Keep the server's request id (where it sent one) so the failure can be traced.
        request_id = exc.response.headers.get("x-request-id")
        extra = {"request_id": request_id} if request_id else {}
        return BackendError(message, retryable=False, status=exc.status_code, **extra)
    return BackendError(message, retryable=False)


def loss_scale(batch: Sequence[Datum], loss: Loss) -> float:
    """``W``, the batch's total loss weight: ``sum |weights|`` (1 per token where absent).

    Crucible's contract reports ``loss`` as the weighted *mean* over the batch's
    loss tokens and backends take the gradient of that mean; Tinker's named
    losses are *sums* over tokens. Sending every weight (cross_entropy) or
    advantage (importance_sampling, ppo) divided by ``W`` makes Tinker's
    gradient the gradient of the mean, so one learning rate means the same on
    every backend. Custom losses are sent unscaled (the function defines them).
    """
    if loss.name == "custom":
        return 1.0
    total = 0.0
    for d in batch:
        w = d.loss_fn_inputs.weights
        total += float(np.sum(np.abs(w))) if w is not None else float(len(d.model_input))
    return total if total > 0 else 1.0


def tinker_datums(batch: Sequence[Datum], loss: Loss, scale: float) -> list[types.Datum]:
    """``batch`` as tinker Datums for ``loss`` (see :func:`loss_scale` for ``scale``)."""
    out: list[types.Datum] = []
    for d in batch:
        li = d.loss_fn_inputs
        n = len(li.target_tokens)
        weights = np.asarray(li.weights if li.weights is not None else [1.0] * n, np.float32)
        inputs: dict[str, Any] = {"target_tokens": np.asarray(li.target_tokens, np.int64)}
        if loss.name == "cross_entropy":
            inputs["weights"] = weights / np.float32(scale)
        elif loss.name in ("importance_sampling", "ppo"):
            if li.logprobs is None or li.advantages is None:
                raise ConfigError(
                    f"the {loss.name} loss needs loss_fn_inputs.logprobs and .advantages "
                    "for every datum"
                )
            inputs["logprobs"] = np.asarray(li.logprobs, np.float32)
            # Tinker's policy losses have no weights: fold them into the advantages.
            inputs["advantages"] = np.asarray(li.advantages, np.float32) * weights / scale
        else:  # custom: every field goes to the loss function; the SDK sends the server
            # only target_tokens and weights.
            for key in ("weights", "advantages", "logprobs", "ref_logprobs"):
                value = getattr(li, key)
                if value is not None:
                    inputs[key] = np.asarray(value, np.float32)
        out.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(list(d.model_input)),
                loss_fn_inputs=inputs,
            )
        )
    return out


def _import(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"custom loss {ref!r} is not callable")
    return obj


class TinkerTrainingSession:
    """A LoRA model being trained through a tinker ``TrainingClient``."""

    def __init__(
        self, backend: TinkerBackend, client: Any, job: TrainingJob, tokenizer: Tokenizer
    ) -> None:
        self._backend = backend
        self._client = client
        self._job = job
        self._tokenizer = tokenizer
        self._step = 0
        self._lock = threading.Lock()
        self._inflight: list[ConcurrentFuture[Any]] = []
        self._closed = False

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def step(self) -> int:
        return self._step

    @property
    def model_id(self) -> str:
        """The Tinker model id of the current training client."""
        return str(self._client.model_id)

    def _track(self, future: ConcurrentFuture[T]) -> ConcurrentFuture[T]:
        with self._lock:
            self._inflight = [f for f in self._inflight if not f.done()]
            self._inflight.append(future)
        return future

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("this tinker training session is closed", retryable=False)

    # -- forward / backward ------------------------------------------------------

    def forward(
        self, batch: Sequence[Datum], loss: Loss
    ) -> ConcurrentFuture[ForwardBackwardResult]:
        return self._fb(batch, loss, forward_only=True)

    def forward_backward(
        self, batch: Sequence[Datum], loss: Loss
    ) -> ConcurrentFuture[ForwardBackwardResult]:
        return self._fb(batch, loss, forward_only=False)

    def _fb(
        self, batch: Sequence[Datum], loss: Loss, *, forward_only: bool
    ) -> ConcurrentFuture[ForwardBackwardResult]:
        self._check_open()
        check_loss(loss)
        if not batch:
            raise ConfigError("forward_backward needs at least one datum")
        custom = loss.name == "custom"
        scale = loss_scale(batch, loss)
        data = tinker_datums(batch, loss, scale)
        what = "forward" if forward_only else "forward_backward"
        try:
            if custom:
                if forward_only:
                    # Evaluation of a custom loss: the forward pass gives the logprobs,
                    # the loss function runs here without gradients.
                    api = self._client.forward(data, "cross_entropy")
                else:
                    api = self._client.forward_backward_custom(data, self._custom_fn(batch, loss))
            else:
                config = {k: v for k, v in loss.params.items() if isinstance(v, int | float | str)}
                call = self._client.forward if forward_only else self._client.forward_backward
                api = call(data, loss.name, config or None)
        except Exception as exc:
            raise self._backend.error(exc, what) from None
        convert = (
            (lambda out: self._custom_eval(out, batch, loss))
            if custom and forward_only
            else (lambda out: _fb_result(out, batch, loss, scale))
        )
        return self._track(self._backend.then(api.future(), convert, what))

    def _custom_fn(self, batch: Sequence[Datum], loss: Loss) -> Callable[..., Any]:
        assert loss.fn is not None
        fn = _import(loss.fn)
        params = dict(loss.params)

        def tinker_loss(_data: list[types.Datum], logprobs: list[Any]) -> Any:
            return fn(list(batch), logprobs, **params)

        return tinker_loss

    def _custom_eval(
        self, out: types.ForwardBackwardOutput, batch: Sequence[Datum], loss: Loss
    ) -> ForwardBackwardResult:
        import torch

        assert loss.fn is not None
        fn = _import(loss.fn)
        logprobs = [torch.tensor(o["logprobs"].to_numpy()) for o in out.loss_fn_outputs]
        with torch.no_grad():
            value, metrics = fn(list(batch), logprobs, **dict(loss.params))
        total = float(value.sum()) if hasattr(value, "sum") else float(value)
        return ForwardBackwardResult(
            loss=total,
            metrics={**{k: float(v) for k, v in metrics.items()}, "loss:sum": total},
            logprobs=[lp.tolist() for lp in logprobs],
            num_tokens=sum(len(d.model_input) for d in batch),
        )

    # -- optimizer -----------------------------------------------------------------

    def optim_step(self, params: AdamParams) -> ConcurrentFuture[OptimStepResult]:
        self._check_open()
        adam = types.AdamParams(
            learning_rate=params.learning_rate,
            beta1=params.beta1,
            beta2=params.beta2,
            eps=params.eps,
            weight_decay=params.weight_decay,
            grad_clip_norm=params.grad_clip_norm,
        )
        try:
            api = self._client.optim_step(adam)
        except Exception as exc:
            raise self._backend.error(exc, "optim_step") from None
        with self._lock:
            self._step += 1
            step = self._step

        def convert(out: types.OptimStepResponse) -> OptimStepResult:
            metrics = {k: float(v) for k, v in (out.metrics or {}).items()}
            grad_norm = metrics.get("grad_norm")
            return OptimStepResult(
                step=step, learning_rate=params.learning_rate, grad_norm=grad_norm, metrics=metrics
            )

        return self._track(self._backend.then(api.future(), convert, "optim_step"))

    # -- checkpoints ---------------------------------------------------------------

    def _ref(self, uri: str, kind: Any, name: str, step: int) -> CheckpointRef:
        return CheckpointRef(
            uri=uri,
            kind=kind,
            step=step,
            backend_id="tinker",
            name=name,
            created_at=datetime.now(UTC),
            metadata={
                "base_model": self._job.model_spec.name,
                "tinker_model_id": self.model_id,
                "lora_rank": self._job.adapter_config.rank
                if not isinstance(self._job.adapter_config, Full)
                else 0,
            },
        )

    def save_state(self, name: str) -> ConcurrentFuture[CheckpointRef]:
        self._check_open()
        step = self._step
        try:
            api = self._client.save_state(name)
        except Exception as exc:
            raise self._backend.error(exc, "save_state") from None
        return self._track(
            self._backend.then(
                api.future(), lambda out: self._ref(out.path, "state", name, step), "save_state"
            )
        )

    def load_state(self, ref: CheckpointRef) -> ConcurrentFuture[None]:
        """Resume from ``ref``: a new training client loaded with weights and optimizer state.

        A barrier: it waits for every call already submitted, then swaps the
        client, so later calls apply to the loaded state. The SDK's own
        ``TrainingClient.load_state*`` are deprecated in favour of creating the
        client from the checkpoint, which is what this does.
        """
        self._check_open()
        if not ref.uri.startswith("tinker://") or ref.kind != "state":
            raise ConfigError(
                f"load_state needs a tinker:// state checkpoint, got {ref.kind} {ref.uri!r}"
            )
        with self._lock:
            pending = list(self._inflight)
        for f in pending:
            # Its caller sees any error; the load proceeds regardless.
            with contextlib.suppress(Exception):
                f.result(self._backend.timeout)
        service = self._backend.service()

        def create() -> Any:
            return service.create_training_client_from_state_with_optimizer(ref.uri).result()

        client = self._backend.blocking(create, f"loading {ref.uri}")
        with self._lock:
            self._client = client
            self._step = ref.step
            self._inflight = []
        done: ConcurrentFuture[None] = ConcurrentFuture()
        done.set_result(None)
        return done

    def save_weights_for_sampler(self, name: str) -> ConcurrentFuture[TinkerSampler]:
        self._check_open()
        step = self._step
        try:
            api = self._client.save_weights_for_sampler(name)
        except Exception as exc:
            raise self._backend.error(exc, "save_weights_for_sampler") from None
        backend = self._backend

        def make(out: types.SaveWeightsForSamplerResponse) -> ConcurrentFuture[TinkerSampler]:
            ref = self._ref(out.path, "sampler", name, step)
            return backend.submit(lambda: backend.load_sampler(self._job.model_spec, ref))

        saved = backend.then(api.future(), make, "save_weights_for_sampler")
        out: ConcurrentFuture[TinkerSampler] = ConcurrentFuture()

        def relay(f: ConcurrentFuture[ConcurrentFuture[TinkerSampler]]) -> None:
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
                return

            def finish(g: ConcurrentFuture[TinkerSampler]) -> None:
                err = g.exception()
                if err is not None:
                    out.set_exception(
                        err if isinstance(err, CrucibleError) else backend.error(err, "sampler")
                    )
                else:
                    out.set_result(g.result())

            f.result().add_done_callback(finish)

        saved.add_done_callback(relay)
        return self._track(out)

    def delete_checkpoint(self, ref: CheckpointRef) -> None:
        """Keep it: the Tinker service stores checkpoints and applies its own retention.

        The Tinker HTTP protocol this backend speaks has no call that deletes a
        training checkpoint, so a retired ``tinker://`` checkpoint is only
        unlisted from the run (its manifest and loop state), never removed
        remotely.
        """
        log.info("tinker keeps %s (the service's retention applies)", ref.uri)

    def close(self) -> None:
        """Wait for submitted calls to settle (bounded), then refuse new ones."""
        if self._closed:
            return
        with self._lock:
            pending = list(self._inflight)
        deadline = time.monotonic() + min(60.0, self._backend.timeout)
        for f in pending:
            with contextlib.suppress(Exception):
                f.result(max(0.0, deadline - time.monotonic()))
        self._closed = True


def _fb_result(
    out: types.ForwardBackwardOutput, batch: Sequence[Datum], loss: Loss, scale: float
) -> ForwardBackwardResult:
    metrics = {k: float(v) for k, v in out.metrics.items()}
    logprobs = [
        [float(x) for x in o["logprobs"].to_numpy().reshape(-1)] if "logprobs" in o else []
        for o in out.loss_fn_outputs
    ]
    # The inputs were divided by ``scale`` (loss_scale), so Tinker's sum is the mean.
    value = metrics.get("loss:sum", 0.0)
    metrics["loss:sum"] = value * scale
    return ForwardBackwardResult(
        loss=value,
        metrics=metrics,
        logprobs=logprobs,
        num_tokens=sum(len(d.model_input) for d in batch),
    )


def completion_text(
    tokenizer: Tokenizer, tokens: Sequence[int], stops: Sequence[str]
) -> tuple[str, bool]:
    """A completion's text as the local path gives it: without the end-of-sequence token
    that ended it, and cut before the first stop string; and whether a stop string cut it.

    Tinker returns every sampled token, the one that stopped generation included (the
    EOS token, or the token that completed a stop string); ``tokens`` keep them, the
    text does not.
    """
    ids = list(tokens)
    eos = tokenizer.eos_token_id
    if ids and eos is not None and ids[-1] == eos:
        ids.pop()
    return _cut_at_stop(tokenizer.decode(ids), stops)


class TinkerSampler:
    """Samples from fixed weights through a tinker ``SamplingClient``."""

    def __init__(
        self,
        backend: TinkerBackend,
        client: Any,
        tokenizer: Tokenizer,
        checkpoint: CheckpointRef | None,
        base_model: str,
    ) -> None:
        self._backend = backend
        self._client = client
        self._tokenizer = tokenizer
        self._checkpoint = checkpoint
        self._base_model = base_model

    @property
    def checkpoint(self) -> CheckpointRef | None:
        return self._checkpoint

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def _tokens(self, prompt: Prompt) -> list[int]:
        if prompt.tokens is not None:
            return list(prompt.tokens)
        if prompt.text is not None:
            return self._tokenizer.encode(prompt.text)
        assert prompt.messages is not None
        return render_messages(self._tokenizer, prompt.messages)

    def sample(self, prompt: Prompt, params: SamplingParams) -> ConcurrentFuture[list[Completion]]:
        tokens = self._tokens(prompt)
        sp = types.SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k is not None else -1,
            seed=params.seed,
            # None keeps the model's own end-of-sequence stop; [] would disable it.
            stop=list(params.stop) if params.stop else None,
        )
        start = time.perf_counter()
        try:
            api = self._client.sample(
                prompt=types.ModelInput.from_ints(tokens),
                num_samples=params.n,
                sampling_params=sp,
            )
        except Exception as exc:
            raise self._backend.error(exc, "sample") from None

        def completion(seq: Any, latency: float) -> Completion:
            text, stopped = completion_text(self._tokenizer, seq.tokens, params.stop)
            return Completion(
                text=text,
                tokens=list(seq.tokens),
                logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
                finish_reason="length" if seq.stop_reason == "length" and not stopped else "stop",
                usage=Usage(prompt_tokens=len(tokens), completion_tokens=len(seq.tokens)),
                latency_ms=latency,
                backend_id="tinker",
                model=self._base_model,
            )

        def convert(response: types.SampleResponse) -> list[Completion]:
            latency = (time.perf_counter() - start) * 1000
            out = [completion(seq, latency) for seq in response.sequences]
            self._backend.record(out, latency)
            return out

        return self._backend.then(api.future(), convert, "sample")

"""Training through a tinker ``TrainingClient``: :func:`open_training_session` checks a
crucible TrainingJob against what Tinker can train and creates the client;
:class:`TinkerTrainingSession` maps each crucible call onto one SDK call and
returns at once with a future."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future as ConcurrentFuture
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from crucible_core.contracts import Tokenizer
from crucible_core.errors import BackendError, ConfigError, CrucibleError, UnsupportedError
from crucible_core.ir.backend import (
    AdamParams,
    CheckpointRef,
    Datum,
    ForwardBackwardResult,
    OptimStepResult,
)
from crucible_core.ir.training import AdamW, Full, Loss, ModelSpec, QLoRA, TrainingJob
from crucible_tinker.client import Connection
from crucible_tinker.conversion import (
    check_loss,
    custom_loss_fn,
    fb_result,
    lora_groups,
    loss_config,
    loss_scale,
    tinker_datums,
)
from crucible_tinker.export import EXTERNAL_KEY, FINAL_NAME

if TYPE_CHECKING:
    from tinker import types

    from crucible_tinker.sampler import TinkerSampler

log = logging.getLogger("crucible_tinker")

__all__ = ["OpenSampler", "TinkerTrainingSession", "open_training_session"]

T = TypeVar("T")
#: Opens a sampler on saved weights (the backend's ``load_sampler``).
OpenSampler = Callable[[ModelSpec, CheckpointRef], "TinkerSampler"]


def open_training_session(
    conn: Connection, job: TrainingJob, tokenizer: Tokenizer, open_sampler: OpenSampler
) -> TinkerTrainingSession:
    """A LoRA training client for ``job``: UnsupportedError for what Tinker cannot train
    (QLoRA, full fine-tuning, SGD, an unknown loss); blocks until the SDK made the client."""
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
    service = conn.service()
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

    client = conn.blocking(create, f"creating a LoRA training client for {job.model_spec.name}")
    return TinkerTrainingSession(conn, client, job, tokenizer, open_sampler)


class TinkerTrainingSession:
    """A LoRA model being trained through a tinker ``TrainingClient``."""

    def __init__(
        self,
        conn: Connection,
        client: Any,
        job: TrainingJob,
        tokenizer: Tokenizer,
        open_sampler: OpenSampler,
    ) -> None:
        self._conn = conn
        self._client = client
        self._job = job
        self._tokenizer = tokenizer
        self._open_sampler = open_sampler
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
        config = {} if custom else loss_config(batch, loss, scale)
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
                call = self._client.forward if forward_only else self._client.forward_backward
                api = call(data, loss.name, config or None)
        except Exception as exc:
            raise self._conn.error(exc, what) from None
        convert = (
            (lambda out: self._custom_eval(out, batch, loss))
            if custom and forward_only
            else (lambda out: fb_result(out, batch, loss, scale))
        )
        return self._track(self._conn.then(api.future(), convert, what))

    def _custom_fn(self, batch: Sequence[Datum], loss: Loss) -> Callable[..., Any]:
        assert loss.fn is not None
        fn = custom_loss_fn(loss.fn)
        params = dict(loss.params)

        def tinker_loss(_data: list[types.Datum], logprobs: list[Any]) -> Any:
            return fn(list(batch), logprobs, **params)

        return tinker_loss

    def _custom_eval(
        self, out: types.ForwardBackwardOutput, batch: Sequence[Datum], loss: Loss
    ) -> ForwardBackwardResult:
        import torch

        assert loss.fn is not None
        fn = custom_loss_fn(loss.fn)
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
        from tinker import types

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
            raise self._conn.error(exc, "optim_step") from None
        with self._lock:
            self._step += 1
            step = self._step

        def convert(out: types.OptimStepResponse) -> OptimStepResult:
            metrics = {k: float(v) for k, v in (out.metrics or {}).items()}
            grad_norm = metrics.get("grad_norm")
            return OptimStepResult(
                step=step, learning_rate=params.learning_rate, grad_norm=grad_norm, metrics=metrics
            )

        return self._track(self._conn.then(api.future(), convert, "optim_step"))

    # -- checkpoints ---------------------------------------------------------------

    def _ref(
        self, uri: str, kind: Any, name: str, step: int, extra: dict[str, Any] | None = None
    ) -> CheckpointRef:
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
                **(extra or {}),
            },
        )

    def save_state(self, name: str) -> ConcurrentFuture[CheckpointRef]:
        self._check_open()
        step = self._step
        try:
            api = self._client.save_state(name)
        except Exception as exc:
            raise self._conn.error(exc, "save_state") from None
        return self._track(
            self._conn.then(
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
                f.result(self._conn.timeout)
        service = self._conn.service()

        def create() -> Any:
            return service.create_training_client_from_state_with_optimizer(ref.uri).result()

        client = self._conn.blocking(create, f"loading {ref.uri}")
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
            # The run's final weights are also saved as external weights, submitted right
            # after (the same step), so `crucible export` can download them: the SDK hands
            # out files of external-weights checkpoints only (see crucible_tinker.export).
            external = self._client.save_weights_external(name) if name == FINAL_NAME else None
        except Exception as exc:
            raise self._conn.error(exc, "save_weights_for_sampler") from None
        conn = self._conn
        open_sampler = self._open_sampler

        def make(out: types.SaveWeightsForSamplerResponse) -> ConcurrentFuture[TinkerSampler]:
            def build() -> TinkerSampler:
                extra: dict[str, Any] = {}
                if external is not None:
                    saved = conn.blocking(external.result, "save_weights_external")
                    extra[EXTERNAL_KEY] = saved.path
                ref = self._ref(out.path, "sampler", name, step, extra)
                return open_sampler(self._job.model_spec, ref)

            return conn.submit(build)

        saved = conn.then(api.future(), make, "save_weights_for_sampler")
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
                        err if isinstance(err, CrucibleError) else conn.error(err, "sampler")
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
        deadline = time.monotonic() + min(60.0, self._conn.timeout)
        for f in pending:
            with contextlib.suppress(Exception):
                f.result(max(0.0, deadline - time.monotonic()))
        self._closed = True

"""A training session: one model being trained on one worker thread.

Every call is queued to the session's single worker thread and applied in
submission order; each returns a ``concurrent.futures.Future`` at once, so a
loop can submit step k+1 before reading step k. Bad input (a token id out of
range, a missing loss input, an unknown loss parameter) raises at submission;
failures while computing surface from ``Future.result()`` as BackendError.

Optimizer hyperparameters. The optimizer's kind (AdamW or SGD) comes from
the job; every step's settings come from the ``AdamParams`` it is given, as
in the Tinker API: ``learning_rate``, ``beta1``/``beta2``, ``eps`` and
``weight_decay``, and ``grad_clip_norm`` (0 = no clipping). For SGD, ``beta1``
carries the momentum (the convention of crucible's training loop, which
sends the job's values every step). Whether a schedule is applied on top is
the backend's ``lr_schedule`` option (:mod:`crucible_local.schedule`).

Gradients of several ``forward_backward`` calls before one ``optim_step`` are
averaged (each call's gradient is that of its own mean loss), so gradient
accumulation over equal micro-batches equals one large batch.

Exact resume: ``save_state`` writes the trainable weights, the optimizer
state, the step counter and the random state (the session's torch stream,
and Python's and NumPy's global generators); ``load_state`` restores all of
them, so the losses after a resume equal those of an uninterrupted run.
Gradients accumulated since the last ``optim_step`` are not saved.
"""

from __future__ import annotations

import contextlib
import copy
import random
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec

from crucible_core.errors import BackendError, ConfigError, CrucibleError
from crucible_core.ir.backend import (
    AdamParams,
    CheckpointRef,
    ForwardBackwardResult,
    OptimStepResult,
)
from crucible_core.ir.training import SGD, Full
from crucible_local import __version__
from crucible_local._hf import peft_quiet
from crucible_local._runtime import COMPUTE_LOCK, torch_state_for_seed
from crucible_local.capabilities import BACKEND_ID
from crucible_local.checkpoints import (
    WeightsFormat,
    atomic_dir,
    checkpoint_root,
    find_weights_dir,
    load_tensors,
    path_from_uri,
    read_meta,
    save_tensors,
    to_uri,
    write_meta,
)
from crucible_local.losses import LossPlan, PreparedBatch, compute_loss, plan_loss, prepare_batch
from crucible_local.sampler import LocalSampler
from crucible_local.schedule import LrSchedule, lr_multiplier

if TYPE_CHECKING:
    import torch

    from crucible_core.ir.backend import Datum
    from crucible_core.ir.training import Loss, TrainingJob
    from crucible_local.models import LoadedModel
    from crucible_local.tokenizer import LocalTokenizer

__all__ = ["LocalTrainingSession"]

T = TypeVar("T")
_STATE_VERSION = 1


def _now() -> datetime:
    return datetime.now(UTC)


class LocalTrainingSession:
    """One model being trained; satisfies ``crucible_core.contracts.TrainingSession``.

    Created by :meth:`crucible_local.backend.LocalBackend.create_session`.
    """

    #: Calls run one at a time, in submission order, on one worker thread; cancelling
    #: the future of a call that has not started means it never runs. The training
    #: loop relies on this to withdraw queued steps when a run is stopped.
    withdraws_queued_calls = True

    def __init__(
        self,
        *,
        job: TrainingJob,
        loaded: LoadedModel,
        model: Any,
        run_dir: Path,
        job_id: str,
        weights_format: WeightsFormat,
        lr_schedule: LrSchedule,
    ) -> None:
        self._job = job
        self._loaded = loaded
        self._model = model
        self._run_dir = run_dir
        self._job_id = job_id
        self._format: WeightsFormat = weights_format
        self._lr_schedule: LrSchedule = lr_schedule
        self._adapter: Literal["lora", "full"] = (
            "full" if isinstance(job.adapter_config, Full) else "lora"
        )
        self._trainable: dict[str, torch.nn.Parameter] = {
            n: p for n, p in model.named_parameters() if p.requires_grad
        }
        self._optimizer = self._build_optimizer(list(self._trainable.values()))
        self._step = 0
        self._accumulated = 0
        self._torch_rng = torch_state_for_seed(job.learning_config.seed)
        self._plans: dict[bytes, LossPlan] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"crucible-local-{job_id}")
        self._lock = threading.Lock()
        self._closed = False

    # -- properties ---------------------------------------------------------------

    @property
    def tokenizer(self) -> LocalTokenizer:
        return self._loaded.tokenizer

    @property
    def step(self) -> int:
        """Optimizer steps applied so far (calls still queued are not counted)."""
        return self._step

    @property
    def job(self) -> TrainingJob:
        return self._job

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def run_dir(self) -> Path:
        """Where checkpoints named by a plain name go (under ``checkpoints/``)."""
        return self._run_dir

    @property
    def context_length(self) -> int:
        return self._loaded.context_length

    @property
    def torch_model(self) -> Any:
        """The torch module being trained (a PEFT model for LoRA), for inspection."""
        return self._model

    @property
    def _optimizer_name(self) -> str:
        return "sgd" if isinstance(self._job.learning_config.optimizer, SGD) else "adamw"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self._trainable.values())

    # -- the TrainingSession contract ---------------------------------------------

    def forward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        """The loss and logprobs of ``batch`` in eval mode (no dropout), without gradients."""
        plan, prepared = self._prepare(batch, loss)
        return self._submit(self._forward_backward, prepared, plan, False)

    def forward_backward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        """The loss and logprobs of ``batch``; its gradient is added to the pending one."""
        plan, prepared = self._prepare(batch, loss)
        return self._submit(self._forward_backward, prepared, plan, True)

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        """Apply the pending gradient (clipped, scheduled); see the module docstring."""
        return self._submit(self._optim_step, params)

    def save_state(self, name: str) -> Future[CheckpointRef]:
        """Write a resumable checkpoint to ``<D>/state`` (see :mod:`crucible_local.checkpoints`)."""
        directory = checkpoint_root(self._run_dir, name) / "state"
        return self._submit(self._save_state, directory, name)

    def load_state(self, ref: CheckpointRef) -> Future[None]:
        """Restore weights, optimizer, step and random state from a ``save_state`` checkpoint."""
        directory = find_weights_dir(path_from_uri(ref.uri), prefer="state")
        return self._submit(self._load_state, directory)

    def save_weights_for_sampler(self, name: str) -> Future[LocalSampler]:
        """Write the weights to ``<D>/sampler`` and return a sampler over a snapshot of them.

        LoRA: a PEFT adapter directory (``adapter_config.json`` +
        ``adapter_model.safetensors``, or ``adapter_model.bin`` for the
        pytorch format). Full: a Hugging Face model directory. Both include
        the tokenizer files.
        """
        directory = checkpoint_root(self._run_dir, name) / "sampler"
        return self._submit(self._save_sampler, directory, name)

    def delete_checkpoint(self, ref: CheckpointRef) -> None:
        """Delete a checkpoint directory this backend wrote (``<D>/state`` or ``<D>/sampler``),
        and ``<D>`` when nothing else is left in it. Already gone: nothing to do.

        Runs on the caller's thread: the core retires a checkpoint only after its
        save resolved, so no queued call still writes it.
        """
        path = path_from_uri(ref.uri)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        parent = path.parent
        with contextlib.suppress(OSError):  # not empty (the other half is kept): keep it
            if path.name in ("state", "sampler") and parent.is_dir():
                parent.rmdir()

    def close(self) -> None:
        """Finish queued calls and stop the worker thread. Later calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True)

    # -- submission ---------------------------------------------------------------

    def _prepare(self, batch: Sequence[Datum], loss: Loss) -> tuple[LossPlan, PreparedBatch]:
        key = msgspec.json.encode(loss)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = plan_loss(loss)
        prepared = prepare_batch(
            batch,
            plan,
            vocab_rows=self._loaded.vocab_rows,
            context_length=self._loaded.context_length,
        )
        return plan, prepared

    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        with self._lock:
            if self._closed:
                raise BackendError(
                    f"training session {self._job_id!r} is closed",
                    hint="create a new session (and load_state to continue)",
                )
            return self._executor.submit(self._run, fn, *args)

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        import torch

        # One compute stream per process; this session's own torch random stream.
        with COMPUTE_LOCK:
            outer = torch.get_rng_state()
            torch.set_rng_state(self._torch_rng)
            try:
                return fn(*args)
            except CrucibleError:
                raise
            except Exception as exc:
                raise BackendError(
                    f"local session {self._job_id!r}: {fn.__name__.strip('_')} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            finally:
                self._torch_rng = torch.get_rng_state()
                torch.set_rng_state(outer)

    # -- work done on the worker thread -------------------------------------------

    def _forward_backward(
        self, batch: PreparedBatch, plan: LossPlan, grad: bool
    ) -> ForwardBackwardResult:
        import torch
        import torch.nn.functional as F

        model = self._model
        if model.training != grad:  # train() walks every module: skip it when nothing changes
            model.train(grad)
        with torch.enable_grad() if grad else torch.no_grad():
            logits = model(input_ids=batch.input_ids, use_cache=False).logits
            rows, width, vocab = logits.shape
            logprobs = -F.cross_entropy(
                logits.reshape(-1, vocab).float(), batch.targets.reshape(-1), reduction="none"
            ).view(rows, width)
            loss, metrics = compute_loss(plan, batch, logprobs, grad=grad)
            if grad:
                loss.backward()
                self._accumulated += 1
        values = logprobs.detach().tolist()
        return ForwardBackwardResult(
            loss=float(loss.detach()),
            metrics=metrics,
            logprobs=[values[i][:n] for i, n in enumerate(batch.lengths)],
            num_tokens=batch.num_tokens,
        )

    def _build_optimizer(self, params: list[Any]) -> torch.optim.Optimizer:
        import torch

        opt = self._job.learning_config.optimizer
        if isinstance(opt, SGD):
            return torch.optim.SGD(
                params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
            )
        return torch.optim.AdamW(
            params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
        )

    def _group(self, params: AdamParams) -> dict[str, Any]:
        """The optimizer's per-group settings from one step's AdamParams."""
        group: dict[str, Any] = {"weight_decay": params.weight_decay}
        if isinstance(self._job.learning_config.optimizer, SGD):
            group["momentum"] = params.beta1
        else:
            group["betas"] = (params.beta1, params.beta2)
            group["eps"] = params.eps
        return group

    def _optim_step(self, params: AdamParams) -> OptimStepResult:
        import torch

        config = self._job.learning_config
        clip = params.grad_clip_norm or None
        multiplier = (
            lr_multiplier(config.scheduler, self._step, config.max_steps)
            if self._lr_schedule == "session"
            else 1.0
        )
        lr = params.learning_rate * multiplier
        group = self._group(params)
        for g in self._optimizer.param_groups:
            g.update(group, lr=lr)
        grads = [p for p in self._trainable.values() if p.grad is not None]
        accumulated = self._accumulated
        if accumulated > 1:
            for p in grads:
                assert p.grad is not None
                p.grad.div_(accumulated)
        if not grads:
            norm = 0.0
        elif clip is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(grads, clip))
        else:
            norm = float(torch.nn.utils.get_total_norm([p.grad for p in grads]))  # pyright: ignore[reportArgumentType]
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        self._step += 1
        self._accumulated = 0
        return OptimStepResult(
            step=self._step,
            learning_rate=lr,
            grad_norm=norm,
            metrics={
                "lr_multiplier": multiplier,
                "accumulated_calls": float(accumulated),
                "grad_clip": float(clip) if clip is not None else 0.0,
            },
        )

    def _meta(self, kind: str, name: str) -> dict[str, Any]:
        spec = self._job.model_spec
        return {
            "backend": BACKEND_ID,
            "crucible_local_version": __version__,
            "state_version": _STATE_VERSION,
            "kind": kind,
            "name": name,
            "job_id": self._job_id,
            "step": self._step,
            "adapter": self._adapter,
            "format": self._format,
            "optimizer": self._optimizer_name,
            "seed": self._job.learning_config.seed,
            "lr_schedule": self._lr_schedule,
            "model": {"name": spec.name, "path": spec.path, "source": self._loaded.source},
            "created_at": _now().isoformat(),
        }

    def _ref(self, directory: Path, kind: Literal["state", "sampler"], name: str) -> CheckpointRef:
        return CheckpointRef(
            uri=to_uri(directory),
            kind=kind,
            step=self._step,
            backend_id=BACKEND_ID,
            name=name,
            created_at=_now(),
            metadata={"format": self._format, "adapter": self._adapter, "job_id": self._job_id},
        )

    def _save_adapter_or_model(self, directory: Path) -> None:
        import torch

        safe = self._format == "safetensors"
        if self._adapter == "lora":
            with peft_quiet():
                # The base weights are never trained under LoRA (and are rebuilt or
                # reloaded from their source), so an lm_head adapter needs no copy of
                # the base embeddings; "auto" would save them and warn.
                self._model.save_pretrained(
                    str(directory), safe_serialization=safe, save_embedding_layers=False
                )
        elif safe:
            self._model.save_pretrained(str(directory))
        else:
            self._model.config.save_pretrained(str(directory))
            torch.save(self._model.state_dict(), directory / "pytorch_model.bin")

    def _save_state(self, directory: Path, name: str) -> CheckpointRef:
        import numpy as np
        import torch

        numpy_state: Any = np.random.get_state()
        rng = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": [
                str(numpy_state[0]),
                [int(v) for v in numpy_state[1]],
                int(numpy_state[2]),
                int(numpy_state[3]),
                float(numpy_state[4]),
            ],
        }
        with atomic_dir(directory) as tmp:
            save_tensors(self._trainable, tmp, "trainable", self._format)
            if self._adapter == "lora":
                self._save_adapter_or_model(tmp)
            torch.save(self._optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(rng, tmp / "rng_state.pt")
            meta = self._meta("state", name)
            meta["trainable"] = {n: list(p.shape) for n, p in self._trainable.items()}
            write_meta(tmp, meta)
        return self._ref(directory, "state", name)

    def _load_state(self, directory: Path) -> None:
        import numpy as np
        import torch

        meta = read_meta(directory)
        if meta.get("kind") != "state" or meta.get("backend") != BACKEND_ID:
            raise ConfigError(
                f"checkpoint {directory} is not a crucible-local state checkpoint",
                hint="load_state takes what save_state returned; sampler weights load with "
                "backend.load_sampler",
            )
        mismatch = [
            f"{key} is {meta.get(key)!r}, this session's is {mine!r}"
            for key, mine in (
                ("adapter", self._adapter),
                ("optimizer", self._optimizer_name),
            )
            if meta.get(key) != mine
        ]
        shapes = {n: list(p.shape) for n, p in self._trainable.items()}
        if meta.get("trainable") != shapes:
            mismatch.append("its trainable parameters differ from this session's")
        if mismatch:
            raise ConfigError(
                f"checkpoint {directory} does not fit this session: {'; '.join(mismatch)}",
                hint="resume with the same model, adapter_config and optimizer as the run that "
                "saved it",
            )
        tensors = load_tensors(directory, "trainable")
        with torch.no_grad():
            for n, p in self._trainable.items():
                p.copy_(tensors[n])
                p.grad = None
        optimizer_state: Any = torch.load(
            directory / "optimizer.pt", map_location="cpu", weights_only=True
        )
        self._optimizer.load_state_dict(optimizer_state)
        rng: Any = torch.load(directory / "rng_state.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        self._step = int(meta["step"])
        self._accumulated = 0

    def _save_sampler(self, directory: Path, name: str) -> LocalSampler:
        with atomic_dir(directory) as tmp:
            self._save_adapter_or_model(tmp)
            self.tokenizer.hf.save_pretrained(str(tmp))
            write_meta(tmp, self._meta("sampler", name))
        ref = self._ref(directory, "sampler", name)
        snapshot = copy.deepcopy(self._model)
        return LocalSampler(
            model=snapshot,
            tokenizer=self.tokenizer,
            model_name=self._loaded.name,
            context_length=self._loaded.context_length,
            checkpoint=ref,
        )


def new_job_id() -> str:
    """A run id for a job that has none: ``local-YYYYmmdd-HHMMSS-<8 hex>``."""
    return f"local-{_now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"

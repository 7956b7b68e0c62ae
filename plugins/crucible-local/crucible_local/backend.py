"""``LocalBackend``: the ``local`` backend (TrainingBackend and InferenceBackend).

Training: :meth:`LocalBackend.create_session` builds the model named by the
job (or loads ``model_spec.path``), applies the adapter and returns a
:class:`~crucible_local.session.LocalTrainingSession`. Inference:
``complete``/``stream`` sample from a default model chosen by the
constructor (``model``, ``model_path``, ``checkpoint``), loaded on first use.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from crucible_core.errors import ConfigError, UnsupportedError
from crucible_core.ir.backend import CheckpointRef, Health
from crucible_core.ir.training import Full, ModelSpec
from crucible_local.capabilities import EXPORT_FORMATS, static_capabilities
from crucible_local.checkpoints import (
    check_format,
    find_weights_dir,
    path_from_uri,
    recover_partial,
)
from crucible_local.schedule import LrSchedule, check_schedule

if TYPE_CHECKING:
    from crucible_core.ir.backend import (
        Capabilities,
        Completion,
        Prompt,
        SamplingParams,
        StreamChunk,
    )
    from crucible_core.ir.training import TrainingJob
    from crucible_local.models import LoadedModel
    from crucible_local.sampler import LocalSampler
    from crucible_local.session import LocalTrainingSession
    from crucible_local.tokenizer import LocalTokenizer

__all__ = ["LocalBackend"]


class LocalBackend:
    """Trains and samples on this machine's CPU with PyTorch and PEFT.

    Options (``BackendRef.options`` in a job file become these keywords):

    ``home``
        Where run directories go: ``<home>/runs/<job_id>/``. Default
        ``$CRUCIBLE_HOME``, else ``./.crucible``.
    ``model``, ``model_path``, ``checkpoint``
        The model ``complete``/``stream``/``health_check`` use: a built-in
        name or a Hugging Face directory, optionally with saved weights (a
        ``file://`` URI or path of a checkpoint). Default: ``tiny-llama``.
    ``lr_schedule``
        ``"caller"`` (default): each step uses the rate ``optim_step`` is
        given (crucible's loop and Tinker compute the schedule);
        ``"session"``: the session applies the job's scheduler to the rate
        it is given (see :mod:`crucible_local.schedule`).
    ``num_threads``
        ``torch.set_num_threads`` for the whole process. Unset: one thread
        as soon as a built-in model is loaded (they are so small that more
        threads only add synchronisation, and on cores busy with other work
        OpenMP threads waiting for each other make a step many times
        slower); torch's own default for models loaded from a directory.
    """

    def __init__(
        self,
        *,
        home: str | os.PathLike[str] | None = None,
        model: str = "tiny-llama",
        model_path: str | None = None,
        checkpoint: str | None = None,
        lr_schedule: LrSchedule = "caller",
        num_threads: int | None = None,
    ) -> None:
        if lr_schedule not in ("session", "caller"):
            raise ConfigError(
                f"backend option lr_schedule: expected 'session' or 'caller', got {lr_schedule!r}"
            )
        if num_threads is not None:
            if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
                raise ConfigError(
                    f"backend option num_threads: expected an integer >= 1, got {num_threads!r}"
                )
            import torch

            torch.set_num_threads(num_threads)
        self._num_threads = num_threads
        self._home = Path(home) if home is not None else None
        self._default_spec = ModelSpec(name=model, path=model_path)
        self._default_checkpoint = checkpoint
        self._lr_schedule: LrSchedule = lr_schedule
        self._lock = threading.Lock()
        self._default_sampler: LocalSampler | None = None
        self._tokenizers: dict[bytes, LocalTokenizer] = {}
        self._sessions: weakref.WeakSet[LocalTrainingSession] = weakref.WeakSet()
        self._samplers: weakref.WeakSet[LocalSampler] = weakref.WeakSet()
        self._counters = {"sessions_created": 0.0, "samplers_loaded": 0.0, "errors": 0.0}

    @property
    def home(self) -> Path:
        """``home``, else ``$CRUCIBLE_HOME`` (read at each call), else ``./.crucible``."""
        if self._home is not None:
            return self._home
        return Path(os.environ.get("CRUCIBLE_HOME", "").strip() or ".crucible")

    def _threads_for(self, loaded: LoadedModel) -> None:
        if self._num_threads is None and loaded.source == "builtin":
            import torch

            torch.set_num_threads(1)

    # -- TrainingBackend -----------------------------------------------------------

    def capabilities(self) -> Capabilities:
        return static_capabilities()

    def get_tokenizer(self, model: ModelSpec) -> LocalTokenizer:
        """The tokenizer of ``model`` (cached per spec), without building the model."""
        from crucible_local.models import load_tokenizer

        key = msgspec.json.encode([model.name, model.path, model.revision, model.tokenizer])
        tok = self._tokenizers.get(key)
        if tok is None:
            tok = self._tokenizers[key] = load_tokenizer(model)
        return tok

    def create_session(
        self, job: TrainingJob, *, run_dir: str | os.PathLike[str] | None = None
    ) -> LocalTrainingSession:
        """A session training ``job``'s model; ``run_dir`` defaults to ``<home>/runs/<job_id>``.

        Everything checkable is checked before the model is built: adapter
        kind, checkpoint format, schedule, loss, resources.
        """
        from crucible_local.adapters import apply_adapter, check_adapter
        from crucible_local.losses import plan_loss
        from crucible_local.models import load_model
        from crucible_local.session import LocalTrainingSession, new_job_id

        weights_format = check_format(job.checkpoint_policy.format)
        if job.checkpoint_policy.format != weights_format:
            # An export format: the final weights are exported in it after the run, so a
            # model that cannot be is refused now, before any training.
            lora = not isinstance(job.adapter_config, Full)
            self.check_export(job.model_spec, job.checkpoint_policy.format, lora=lora)
        check_schedule(job.learning_config, self._lr_schedule)
        plan_loss(job.learning_config.loss)
        if job.resource_spec.gpus:
            raise UnsupportedError(
                f"resource_spec.gpus = {job.resource_spec.gpus}: crucible-local trains on CPU",
                hint="set gpus = 0, or choose a backend with GPUs",
            )
        check_adapter(job.adapter_config)
        loaded = load_model(job.model_spec)
        self._threads_for(loaded)
        model = apply_adapter(
            loaded,
            job.adapter_config,
            seed=job.learning_config.seed,
            start_from=job.model_spec.adapter,
        )
        job_id = job.job_id or new_job_id()
        where = Path(run_dir) if run_dir is not None else self.home / "runs" / job_id
        # A process killed mid-save left temporary directories: clean them before writing.
        recover_partial(where / "checkpoints")
        session = LocalTrainingSession(
            job=job,
            loaded=loaded,
            model=model,
            run_dir=where,
            job_id=job_id,
            weights_format=weights_format,
            lr_schedule=self._lr_schedule,
        )
        with self._lock:
            self._sessions.add(session)
            self._counters["sessions_created"] += 1
        return session

    def estimate_checkpoint_bytes(self, job: TrainingJob) -> dict[str, int]:
        """Bytes of a sampler checkpoint (trained weights) and a state checkpoint.

        Read by ``crucible plan``. A sampler checkpoint holds the trained weights
        plus the tokenizer and config files (~40 KB); a state checkpoint holds
        the trained weights twice (the adapter a sampler can load, and the exact
        tensors for resume), AdamW's two moments per weight, and RNG state (~20 KB).
        """
        from crucible_local.adapters import apply_adapter, check_adapter
        from crucible_local.models import load_model

        check_adapter(job.adapter_config)
        loaded = load_model(job.model_spec)
        model = apply_adapter(
            loaded,
            job.adapter_config,
            seed=job.learning_config.seed,
            start_from=job.model_spec.adapter,
        )
        trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        return {"sampler": int(trained) + 40_000, "state": int(trained) * 4 + 20_000}

    def load_sampler(self, model: ModelSpec, checkpoint: CheckpointRef | None) -> LocalSampler:
        """A sampler over ``model``'s base weights, or the weights saved at ``checkpoint``.

        ``checkpoint.uri`` (file:// URI or path) may name a PEFT adapter
        directory, a Hugging Face model directory (full fine-tune), a state
        checkpoint, or a checkpoint directory holding ``sampler/``/``state/``.
        """
        from crucible_local.models import load_model
        from crucible_local.sampler import LocalSampler
        from crucible_local.tokenizer import BYTE_TOKENIZER_NAME

        if checkpoint is None:
            loaded = load_model(model)
            torch_model: Any = loaded.model
        else:
            directory = find_weights_dir(path_from_uri(checkpoint.uri), prefer="sampler")
            if (directory / "adapter_config.json").is_file():
                from peft import PeftModel

                from crucible_local._hf import peft_quiet

                loaded = load_model(model)
                with peft_quiet():
                    torch_model = PeftModel.from_pretrained(loaded.model, str(directory))
            elif (directory / "config.json").is_file():
                # A full fine-tune's sampler directory is a complete model directory.
                tokenizer = model.tokenizer
                if tokenizer is None and not (directory / "tokenizer_config.json").is_file():
                    tokenizer = model.path or BYTE_TOKENIZER_NAME
                full = msgspec.structs.replace(
                    model, path=str(directory), tokenizer=tokenizer, options={}
                )
                loaded = load_model(full)
                torch_model = loaded.model
            else:
                loaded = _load_full_state(model, directory)
                torch_model = loaded.model
        self._threads_for(loaded)
        sampler = LocalSampler(
            model=torch_model,
            tokenizer=loaded.tokenizer,
            model_name=model.name,
            context_length=loaded.context_length,
            checkpoint=checkpoint,
        )
        with self._lock:
            self._samplers.add(sampler)
            self._counters["samplers_loaded"] += 1
        return sampler

    # -- ExportingBackend (optional; crucible export) ------------------------------

    #: The ``crucible export --format`` values this backend writes.
    export_formats: tuple[str, ...] = EXPORT_FORMATS

    def export(
        self, model: ModelSpec, checkpoint: CheckpointRef, fmt: str, out: Path, *, final: Path
    ) -> dict[str, Any]:
        """Write ``checkpoint`` as ``fmt`` into ``out`` (see :mod:`crucible_local.export`)."""
        from crucible_local.export import export

        result = export(model, checkpoint, fmt, Path(out), final=Path(final))
        return {"base": result.base, "load_code": result.load_code, "files": result.files}

    def check_export(self, model: ModelSpec, fmt: str, *, lora: bool = True) -> None:
        """Refuse a format this backend cannot write for ``model`` (UnsupportedError naming
        why), without loading it (see :func:`crucible_local.export.check_export`)."""
        from crucible_local.export import check_export

        check_export(model, fmt, lora=lora)

    def verify_export(
        self, model: ModelSpec, checkpoint: CheckpointRef, fmt: str, out: Path
    ) -> dict[str, Any]:
        """Load the export in a fresh process and compare (see :mod:`crucible_local.verify`)."""
        from crucible_local.verify import verify_export

        return verify_export(model, checkpoint, fmt, Path(out))

    # -- InferenceBackend ------------------------------------------------------------

    def _sampler(self) -> LocalSampler:
        with self._lock:
            sampler = self._default_sampler
        if sampler is None:
            ref = (
                CheckpointRef(uri=self._default_checkpoint, kind="sampler")
                if self._default_checkpoint
                else None
            )
            sampler = self.load_sampler(self._default_spec, ref)
            with self._lock:
                if self._default_sampler is None:
                    self._default_sampler = sampler
                sampler = self._default_sampler
        return sampler

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        """One completion from the default model (``params.n`` must be 1)."""
        if params.n != 1:
            raise ConfigError(
                f"params.n = {params.n}: complete returns one completion",
                hint="set n = 1, or use a Sampler (backend.load_sampler) for several",
            )
        return self._sampler().generate(prompt, params)[0]

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        """The default model's completion, one chunk per token; the last has finish_reason."""
        return self._sampler().stream(prompt, params)

    def health_check(self) -> Health:
        """Loads the default model if needed and generates one token."""
        from crucible_core.ir.backend import Prompt, SamplingParams

        start = time.perf_counter()
        try:
            sampler = self._sampler()
            sampler.generate(Prompt(text="ok"), SamplingParams(max_tokens=1, temperature=0.0))
        except Exception as exc:
            return Health(
                ok=False,
                detail=f"{type(exc).__name__}: {exc}",
                latency_ms=(time.perf_counter() - start) * 1000,
            )
        import torch

        return Health(
            ok=True,
            detail=f"torch {torch.__version__} on CPU ({torch.get_num_threads()} threads), "
            f"model {sampler.model_name!r}",
            latency_ms=(time.perf_counter() - start) * 1000,
        )

    def metrics(self) -> Mapping[str, float]:
        """Counters: sessions, samplers, and the default model's requests, tokens and latency."""
        with self._lock:
            out = dict(self._counters)
            out["sessions_open"] = float(sum(1 for s in self._sessions if not s.closed))
            sampler = self._default_sampler
        stats = sampler.stats() if sampler is not None else {}
        for key in ("requests", "errors", "prompt_tokens", "completion_tokens"):
            out[key if key != "errors" else "request_errors"] = stats.get(key, 0.0)
        requests = stats.get("requests", 0.0)
        out["latency_ms_mean"] = stats.get("latency_ms_total", 0.0) / requests if requests else 0.0
        return out

    def close(self) -> None:
        """Close the default sampler and every session and sampler this backend made."""
        with self._lock:
            sessions = list(self._sessions)
            samplers = list(self._samplers)
            self._default_sampler = None
        for session in sessions:
            session.close()
        for sampler in samplers:
            sampler.close()


def _load_full_state(model: ModelSpec, directory: Path) -> LoadedModel:
    """The base model with a full fine-tune's state checkpoint (``trainable.*``) loaded."""
    import torch

    from crucible_local.checkpoints import load_tensors, read_meta
    from crucible_local.models import load_model

    if read_meta(directory).get("adapter") != "full":
        raise ConfigError(
            f"checkpoint {directory} holds no loadable weights for a sampler",
            hint="point at a sampler/ or state/ directory written by crucible-local",
        )
    loaded = load_model(model)
    tensors = load_tensors(directory, "trainable")
    params = dict(loaded.model.named_parameters())
    missing = sorted(set(params) - set(tensors))
    if missing:
        raise ConfigError(
            f"checkpoint {directory} does not fit model {model.name!r}: no weights for "
            f"{', '.join(missing[:5])}",
            hint="load it with the model_spec of the run that saved it",
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])
    return loaded

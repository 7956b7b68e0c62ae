"""The contracts plugins satisfy, as ``typing.Protocol`` classes.

A plugin never subclasses anything from here: it satisfies a contract
structurally and the conformance kit (:mod:`crucible_core.testing`) checks it.

Why training calls return futures (sync-with-futures, not async): both
engines that must fit behind the contract are synchronous at heart. The
``tinker`` SDK returns futures from ``forward_backward_async``/``optim_step``
and expects the caller to submit the next request before reading the last
result (its server runs on a clock); a local torch engine is a single
compute stream best driven by one worker thread that returns
``concurrent.futures.Future``. A :class:`Future` here is anything with
``result(timeout)`` and ``done()``, so both fit without an event loop, and
the training loop is pipelined by submitting step k+1 before reading step k.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
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
    )
    from crucible_core.ir.experiment import Experiment
    from crucible_core.ir.lineage import Artifact, ArtifactType
    from crucible_core.ir.training import DatasetSpec, Loss, ModelSpec, TrainingJob
    from crucible_core.ir.work import Job

__all__ = [
    "ArtifactStore",
    "CancelToken",
    "Command",
    "DatasetSource",
    "Executor",
    "ExportingBackend",
    "Future",
    "InferenceBackend",
    "Sampler",
    "Stage",
    "StageContext",
    "Tokenizer",
    "TrainingBackend",
    "TrainingSession",
]

T_co = TypeVar("T_co", covariant=True)


@runtime_checkable
class Future(Protocol[T_co]):
    """A pending result: ``concurrent.futures.Future`` and the tinker SDK's futures both fit."""

    def result(self, timeout: float | None = None) -> T_co: ...

    def done(self) -> bool: ...


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids for one model. ``name`` identifies it in run manifests."""

    @property
    def name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_token_id(self) -> int | None: ...

    @property
    def chat_template(self) -> str | None: ...

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@runtime_checkable
class InferenceBackend(Protocol):
    """Generates completions. ``stream`` yields chunks whose last has ``finish_reason`` set."""

    def capabilities(self) -> Capabilities: ...

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion: ...

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]: ...

    def health_check(self) -> Health: ...

    def metrics(self) -> Mapping[str, float]: ...

    def close(self) -> None: ...


@runtime_checkable
class Sampler(Protocol):
    """Samples from fixed weights (a saved checkpoint or the base model).

    ``sample`` returns ``params.n`` completions for one prompt.
    """

    @property
    def checkpoint(self) -> CheckpointRef | None: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    def sample(self, prompt: Prompt, params: SamplingParams) -> Future[list[Completion]]: ...


@runtime_checkable
class TrainingSession(Protocol):
    """One model being trained. Calls are applied in submission order.

    ``forward_backward`` accumulates gradients until the next ``optim_step``;
    ``forward`` computes the same result without gradients (evaluation).
    """

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def step(self) -> int: ...

    def forward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]: ...

    def forward_backward(
        self, batch: Sequence[Datum], loss: Loss
    ) -> Future[ForwardBackwardResult]: ...

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]: ...

    def save_state(self, name: str) -> Future[CheckpointRef]: ...

    def load_state(self, ref: CheckpointRef) -> Future[None]: ...

    def save_weights_for_sampler(self, name: str) -> Future[Sampler]: ...

    def delete_checkpoint(self, ref: CheckpointRef) -> None:
        """Delete a checkpoint this session saved (state or sampler weights).

        The core calls it for checkpoints the policy retires and for weights
        saved only to score samples, after unlisting them: the files (or the
        remote object) belong to the backend, which alone knows where and how
        they are stored. Deleting one that is already gone is not an error; a
        backend whose service keeps checkpoints itself (with its own
        retention) may keep them, and says so in its documentation.
        """
        ...

    def close(self) -> None:
        """Finish or drop queued calls and release the model; idempotent."""
        ...


@runtime_checkable
class TrainingBackend(Protocol):
    """Creates training sessions from a TrainingJob."""

    def capabilities(self) -> Capabilities: ...

    def get_tokenizer(self, model: ModelSpec) -> Tokenizer:
        """The tokenizer of ``model``, without creating a session (data prep needs it first)."""
        ...

    def create_session(self, job: TrainingJob, *, run_dir: Path) -> TrainingSession:
        """A session training ``job``; files it writes (checkpoints) go under ``run_dir``.

        ``run_dir`` is the run's directory, chosen by the core
        (``$CRUCIBLE_HOME/runs/<job_id>`` for a run); a remote backend may
        ignore it.
        """
        ...

    def load_sampler(self, model: ModelSpec, checkpoint: CheckpointRef | None) -> Sampler:
        """A sampler over saved sampler weights (``checkpoint``) or the base model (``None``)."""
        ...


@runtime_checkable
class ExportingBackend(Protocol):
    """Optional, beside TrainingBackend: writes a run's weights in formats other tools load.

    ``crucible export`` (core) resolves the run and checkpoint, makes a fresh
    temporary directory ``out``, calls :meth:`export`, writes the model card,
    renames ``out`` to ``final`` and records the export; ``--verify`` then
    calls :meth:`verify_export` on ``final``. A backend without these methods
    cannot export (the command says so, exit 2).
    """

    #: The ``--format`` values this backend writes.
    export_formats: tuple[str, ...]

    def export(
        self, model: ModelSpec, checkpoint: CheckpointRef, fmt: str, out: Path, *, final: Path
    ) -> Mapping[str, Any]:
        """Write ``checkpoint``'s weights as ``fmt`` into the empty directory ``out``.

        Returns ``{"base": str | None, "load_code": str}``: the base model a
        ``peft`` export names, and Python loading the export with the stock
        libraries, ``{out}`` standing for its directory. Refuses a format it
        cannot write for this model with UnsupportedError naming the reason.
        """
        ...

    def check_export(self, model: ModelSpec, fmt: str, *, lora: bool = True) -> None:
        """Refuse, without loading anything, a format this backend cannot write for
        ``model`` (UnsupportedError naming why, e.g. gguf of a non-llama architecture);
        ``lora``: the run trains an adapter. ``crucible plan`` asks it when
        ``checkpoint_policy.format`` is an export format (gguf, onnx); such a run also
        exports its final weights in that format (list the format in the capabilities'
        ``metadata["export_formats"]``)."""
        ...

    def verify_export(
        self, model: ModelSpec, checkpoint: CheckpointRef, fmt: str, out: Path
    ) -> Mapping[str, Any]:
        """Load ``out`` with the stock library in a fresh process and compare it with the
        checkpoint's own sampler; returns ``{"ok", "max_abs_diff", "tolerance", "probes",
        "loader"}``."""
        ...


@runtime_checkable
class CancelToken(Protocol):
    """Cooperative cancellation: long work polls ``is_set()`` at safe points."""

    def is_set(self) -> bool: ...


@runtime_checkable
class StageContext(Protocol):
    """What a stage gets: its options, its dependencies' outputs and the run's services.

    ``job`` is the Work IR job being run (a training run's ``payload`` is its
    TrainingJob as plain data); ``experiment`` is the Experiment whose DAG this
    stage belongs to.
    """

    @property
    def job_id(self) -> str: ...

    @property
    def job(self) -> Job: ...

    @property
    def experiment(self) -> Experiment: ...

    @property
    def run_dir(self) -> Path: ...

    @property
    def options(self) -> Mapping[str, Any]: ...

    @property
    def inputs(self) -> Mapping[str, Mapping[str, Any]]: ...

    @property
    def cancel(self) -> CancelToken: ...

    @property
    def artifacts(self) -> ArtifactStore: ...

    def backend(self, name: str | None = None) -> Any: ...

    def emit(self, kind: str, /, **data: Any) -> None: ...


@runtime_checkable
class Stage(Protocol):
    """A named step of a pipeline. Returns outputs its dependents read from ``ctx.inputs``."""

    def run(self, ctx: StageContext) -> Mapping[str, Any] | None: ...


@runtime_checkable
class Executor(Protocol):
    """Runs callables somewhere (this thread, a pool, another process, a cluster)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]: ...

    def shutdown(self, wait: bool = True) -> None: ...


@runtime_checkable
class DatasetSource(Protocol):
    """Reads rows described by a DatasetSpec; rows are plain mappings."""

    def iter_rows(self, spec: DatasetSpec) -> Iterator[Mapping[str, Any]]: ...


@runtime_checkable
class ArtifactStore(Protocol):
    """Keeps files by content (sha256) and gives them back."""

    def put(
        self,
        path: Path,
        *,
        type: ArtifactType,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Artifact: ...

    def path_of(self, sha256: str) -> Path: ...

    def exists(self, sha256: str) -> bool: ...


@runtime_checkable
class Command(Protocol):
    """A CLI subcommand a plugin adds: it declares its arguments, then runs."""

    def configure(self, parser: Any) -> None: ...

    def run(self, args: Any) -> int | None: ...

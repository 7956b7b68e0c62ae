"""One run from ``run.start`` to ``run.end``: its records, its services, its steps.

A :class:`RunScope` is what both the stage-graph runner
(:func:`crucible_core.pipeline.runner.run_pipeline`) and a recipe (the typed
supervised workflow, :mod:`crucible_core.train.sft`) run inside, so a run
looks the same to every observer whichever ran it:

- **Start** (:meth:`RunScope.open`): the run directory, the manifest's
  ``job_id``, ``kind``, ``experiment_id``, ``config_digest``, ``seed``,
  ``started_at``, ``status = running`` and ``executions`` (1 on the run
  directory's first start, then 2, 3... for retries and resumes), and the
  event ``run.start`` (``job_kind``, ``experiment_id``, ``name``,
  ``config_digest``, ``dataset`` ``{uri, hash}`` with the dataset file's
  sha256, ``attempt``, ``execution``, ``parent_job_id`` from
  ``job.metadata``).
- **Steps**: each stage or recipe step is framed by ``stage.start`` /
  ``stage.end`` (``status`` ok, error or skipped; ``duration_ms``); its
  context (:class:`StepContext`) emits events tagged with the step, stores
  artifacts by content and lists them in the manifest (``artifact.stored``).
- **End** (:meth:`RunScope.close`, once, whatever ends the run): the
  manifest's ``status`` (:func:`~crucible_core.records.runstatus.status_for`),
  ``finished_at`` and per-step status, a lineage Trace with a span per step
  (``consumes`` the dataset, ``produces`` each artifact), then ``run.end``
  (``status``, ``error``, ``artifacts``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import time
from collections.abc import Callable, Generator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from crucible_core._errors import reworded
from crucible_core.contracts import ArtifactStore
from crucible_core.errors import CrucibleError
from crucible_core.ir.experiment import Experiment, StageDef
from crucible_core.ir.lineage import Artifact, ArtifactType, Edge, Span, Trace
from crucible_core.ir.work import Job
from crucible_core.pipeline.backends import create_backend
from crucible_core.pipeline.cancel import CancelFlag, reason_of
from crucible_core.records import paths
from crucible_core.records.artifacts import (
    LocalArtifactStore,
    config_digest,
    digest_path,
    environment_info,
)
from crucible_core.records.events import EventBus
from crucible_core.records.manifest import RunRecord
from crucible_core.records.runstatus import status_for

if TYPE_CHECKING:
    from crucible_core.plugins import PluginHost
    from crucible_core.records.lineage import LineageRecorder

__all__ = ["BackendResolver", "RunScope", "StepContext", "stage_error"]

#: ``resolver(name)`` returns a backend; ``name=None`` means the experiment's default.
BackendResolver = Callable[[str | None], Any]

_Span = tuple[float, float | None, str, str | None]
T = TypeVar("T")


class _RecordingStore:
    """The store a step sees: stores by content, then lists the file in the run's records."""

    def __init__(self, run: RunScope, stage: str) -> None:
        self._run = run
        self._stage = stage

    def put(
        self,
        path: Path,
        *,
        type: ArtifactType,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Artifact:
        meta = {"stage": self._stage, **(metadata or {})}
        artifact = self._run.store.put(path, type=type, name=name, metadata=meta)
        self._run.record.record_artifact(artifact, path=Path(path))
        with self._run.lock:
            self._run.artifacts.append(artifact)
        self._run.emit(
            "artifact.stored",
            stage=self._stage,
            artifact_id=artifact.artifact_id,
            type=type,
            name=name,
            size_bytes=artifact.size_bytes,
        )
        return artifact

    def path_of(self, sha256: str) -> Path:
        return self._run.store.path_of(sha256)

    def exists(self, sha256: str) -> bool:
        return self._run.store.exists(sha256)


class RunScope:
    """The records and services of one run; see the module docstring."""

    def __init__(
        self,
        experiment: Experiment,
        job: Job,
        *,
        host: PluginHost | None = None,
        bus: EventBus | None = None,
        store: ArtifactStore | None = None,
        cancel: Any = None,
        backend_resolver: BackendResolver | None = None,
        lineage: LineageRecorder | None = None,
    ) -> None:
        self.experiment = experiment
        self.job = job
        self.host = host
        self._own_bus = bus is None
        self.bus = bus if bus is not None else EventBus(host=self.get_host())
        self.store: ArtifactStore = store if store is not None else LocalArtifactStore()
        # Our own flag (child of the caller's): Ctrl-C in the waiting thread sets it.
        self.cancel = CancelFlag(parent=cancel)
        self.run_dir = paths.run_dir(job.id)
        self.record = RunRecord(self.run_dir)
        self.lock = threading.Lock()
        self.artifacts: list[Artifact] = []
        self.status: dict[str, str] = {}
        self.spans: dict[str, _Span] = {}
        self._resolver = backend_resolver
        self._backends: dict[str | None, Any] = {}
        self._lineage = lineage
        #: Closed when the run ends, on every path (e.g. a session a stage opened).
        self.resources = contextlib.ExitStack()
        self._started = 0.0
        self._closed = False

    # -- services ----------------------------------------------------------

    def emit(self, kind: str, /, **data: Any) -> None:
        """An event of this run; ``step``/``epoch`` keywords fill those fields."""
        step = data.pop("step", None)
        epoch = data.pop("epoch", None)
        self.bus.emit(kind, job_id=self.job.id, step=step, epoch=epoch, **data)

    def get_host(self) -> PluginHost:
        """The plugin host (the process's own unless one was given)."""
        if self.host is None:
            from crucible_core.plugins import get_host

            self.host = get_host()
        return self.host

    def backend(self, name: str | None = None) -> Any:
        """The experiment's backend (``name=None``, with its fallbacks) or another by name.

        Created once per run and name.
        """
        with self.lock:
            if name in self._backends:
                return self._backends[name]
        backend = self._resolver(name) if self._resolver is not None else self._resolve(name)
        with self.lock:
            return self._backends.setdefault(name, backend)

    def _resolve(self, name: str | None) -> Any:
        ref = self.experiment.backend
        if name is not None and name != ref.name:
            return self.get_host().create("backend", name)
        host = self.get_host()
        return create_backend(
            host,
            ref,
            # fail-overs of the routed backend go to this run's telemetry
            routed_options={"bus": self.bus, "job_id": self.job.id, "host": host},
            on_fallback=lambda chosen, tried: self.emit(
                "backend.fallback", backend=chosen, skipped=tried
            ),
            owner=f"of experiment {self.experiment.id!r}",
        )

    # -- start and end -------------------------------------------------------

    def open(self) -> RunScope:
        """Record the start (manifest, ``run.start``); returns self."""
        experiment, job = self.experiment, self.job
        self._started = time.time()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        executions = 1
        with contextlib.suppress(CrucibleError):
            executions = (self.record.read().executions or 0) + 1
        digest = config_digest(experiment)
        dataset: dict[str, Any] | None = None
        if experiment.dataset is not None:
            dataset = {"uri": experiment.dataset.uri, "hash": _file_sha256(experiment.dataset.uri)}
        self.record.update(
            job_id=job.id,
            kind=job.kind,
            experiment_id=experiment.id,
            config_digest=digest,
            seed=experiment.seeds[0] if experiment.seeds else None,
            started_at=_iso(self._started),
            status="running",
            executions=executions,
            **(
                {"dataset": {"uri": dataset["uri"], "file_sha256": dataset["hash"]}}
                if dataset is not None
                else {}
            ),
            **({"environment": environment_info(self.host)} if self.host is not None else {}),
        )
        self.emit(
            "run.start",
            job_kind=job.kind,
            experiment_id=experiment.id,
            name=experiment.name or experiment.id,
            config_digest=digest,
            dataset=dataset,
            attempt=job.attempts,
            execution=executions,
            parent_job_id=job.metadata.get("parent_job_id"),
        )
        return self

    def close(self, error: BaseException | None) -> str:
        """Record the end once (status, lineage, ``run.end``); returns the run status."""
        if self._closed:
            raise RuntimeError("the run scope is already closed")
        self._closed = True
        try:
            self.resources.close()
        except Exception as exc:  # a failing close must not hide how the run ended
            self.emit("run.warning", message=f"closing the run's resources failed: {exc}")
        final = status_for(
            error,
            cancel_reason=(reason_of(self.cancel) or "cancelled") if self.cancel.is_set() else None,
        )
        try:
            self._record_trace(final)
            self.record.update(
                status=final,
                finished_at=_iso(time.time()),
                stages={
                    n: {"status": s} | _timing(self.spans.get(n)) for n, s in self.status.items()
                },
            )
            self.emit(
                "run.end",
                status=final,
                error=None if error is None else f"{type(error).__name__}: {error}",
                artifacts=[
                    {
                        "artifact_id": a.artifact_id,
                        "uri": a.uri,
                        "sha256": a.sha256,
                        "type": a.type,
                        "name": a.metadata.get("name"),
                        "stage": a.metadata.get("stage"),
                    }
                    for a in self.artifacts
                ],
            )
        finally:
            if self._own_bus:
                self.bus.close()
        return final

    def __enter__(self) -> RunScope:
        return self.open()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, KeyboardInterrupt):
            self.cancel.set("interrupted")
        self.close(exc)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a worker thread, so Ctrl-C in the calling thread stops it cleanly.

        A KeyboardInterrupt while waiting sets the run's cancel flag
        (``interrupted``: the loop stops at the next step boundary and saves a
        checkpoint), waits for ``fn`` to return, and is re-raised.
        """
        with cf.ThreadPoolExecutor(1, thread_name_prefix="crucible-run") as pool:
            future = pool.submit(fn)
            try:
                return future.result()
            except KeyboardInterrupt:
                self.cancel.set("interrupted")
                with contextlib.suppress(BaseException):
                    future.result()
                raise

    # -- steps -----------------------------------------------------------------

    def context(self, stage: StageDef, inputs: Mapping[str, Mapping[str, Any]]) -> StepContext:
        """The context a stage (or recipe step) runs with."""
        return StepContext(self, stage, inputs)

    def started(self, stage: StageDef) -> None:
        """Record that ``stage`` started (``stage.start``)."""
        with self.lock:
            self.status[stage.name] = "running"
            self.spans[stage.name] = (time.time(), None, "running", None)
        self.emit("stage.start", stage=stage.name, uses=stage.uses)

    def ended(self, name: str, error: BaseException | None = None) -> None:
        """Record that a started stage ended, ok or with ``error`` (``stage.end``)."""
        begin = self.spans[name][0]
        end = time.time()
        if error is None:
            self.status[name] = "ok"
            self.spans[name] = (begin, end, "ok", None)
            self.emit("stage.end", stage=name, status="ok", duration_ms=(end - begin) * 1000)
            return
        self.status[name] = "error"
        self.spans[name] = (begin, end, "error", f"{type(error).__name__}: {error}")
        self.emit(
            "stage.end",
            stage=name,
            status="error",
            duration_ms=(end - begin) * 1000,
            error=str(error),
        )

    def skipped(self, name: str) -> None:
        """Record that a stage will not run (a dependency failed, or the run was cancelled)."""
        self.status[name] = "skipped"
        self.emit("stage.end", stage=name, status="skipped", duration_ms=0.0)

    @contextlib.contextmanager
    def step(
        self, name: str, uses: str, inputs: Mapping[str, Mapping[str, Any]] | None = None
    ) -> Generator[StepContext]:
        """Run a recipe step as stage ``name`` (framed by ``stage.start``/``stage.end``)."""
        stage = StageDef(name=name, uses=uses)
        self.started(stage)
        try:
            yield self.context(stage, inputs or {})
        except Exception as exc:
            self.ended(name, exc)
            raise stage_error(name, exc) from exc
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: as they are
            self.ended(name, exc)
            raise
        self.ended(name)

    def _record_trace(self, final: str) -> None:
        job = self.job
        edges: list[Edge] = [
            Edge(src=job.id, dst=a.artifact_id, kind="produces", metadata=dict(a.metadata))
            for a in self.artifacts
        ]
        if self.experiment.dataset is not None:
            edges.append(
                Edge(src=job.id, dst=f"dataset:{self.experiment.dataset.uri}", kind="consumes")
            )
        trace = Trace(
            trace_id=job.id,
            spans=[
                Span(
                    span_id=f"{job.id}/{name}",
                    trace_id=job.id,
                    name=name,
                    start=datetime.fromtimestamp(begin, UTC),
                    end=datetime.fromtimestamp(end, UTC) if end is not None else None,
                    status="ok" if st == "ok" else "error" if st == "error" else "running",
                    attributes={"error": err} if err else {},
                )
                for name, (begin, end, st, err) in self.spans.items()
            ],
            artifacts=list(self.artifacts),
            edges=edges,
            metadata={
                "kind": job.kind,
                "experiment_id": self.experiment.id,
                "status": final,
                "started_at": _iso(self._started),
            },
        )
        label = self.experiment.name or self.experiment.id
        if self._lineage is not None:
            self._lineage.record_trace(trace, label=label)
            return
        from crucible_core.records.lineage import LineageRecorder

        with LineageRecorder() as recorder:
            recorder.record_trace(trace, label=label)


class StepContext:
    """What one stage or recipe step gets; satisfies :class:`crucible_core.contracts.StageContext`.

    Beyond the contract: ``stage`` (its StageDef), ``bus``, ``host`` and
    ``scope`` (the run's :class:`RunScope`).
    """

    def __init__(
        self, scope: RunScope, stage: StageDef, inputs: Mapping[str, Mapping[str, Any]]
    ) -> None:
        self.scope = scope
        self.stage = stage
        self.job: Job = scope.job
        self.job_id: str = scope.job.id
        self.experiment: Experiment = scope.experiment
        self.run_dir: Path = scope.run_dir
        self.options: Mapping[str, Any] = stage.options
        self.inputs: Mapping[str, Mapping[str, Any]] = inputs
        self.cancel: CancelFlag = CancelFlag(parent=scope.cancel)
        self.artifacts: ArtifactStore = _RecordingStore(scope, stage.name)

    @property
    def bus(self) -> EventBus:
        return self.scope.bus

    @property
    def host(self) -> PluginHost:
        return self.scope.get_host()

    def backend(self, name: str | None = None) -> Any:
        """The experiment's backend (``name=None``, with its fallbacks) or another by name."""
        return self.scope.backend(name)

    def emit(self, kind: str, /, **data: Any) -> None:
        """Emit an event for this job; ``step``/``epoch`` keywords fill those fields."""
        data.setdefault("stage", self.stage.name)
        self.scope.emit(kind, **data)


def stage_error(name: str, exc: BaseException) -> CrucibleError:
    """``exc`` as the same crucible error class, naming the stage."""
    if isinstance(exc, CrucibleError):
        return reworded(exc, f"stage {name!r} failed: {exc.message}", stage=name)
    err = CrucibleError(
        f"stage {name!r} failed: {type(exc).__name__}: {exc}",
        hint="the stage raised an exception that is not a Crucible error",
        stage=name,
    )
    err.__cause__ = exc
    return err


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _timing(span: _Span | None) -> dict[str, Any]:
    if span is None or span[1] is None:
        return {}
    return {"duration_ms": round((span[1] - span[0]) * 1000, 3)}


def _file_sha256(uri: str) -> str | None:
    """sha256 of a local dataset file (None for remote or generated data)."""
    path = Path(uri)
    if not path.is_file():
        return None
    return digest_path(path)[0]

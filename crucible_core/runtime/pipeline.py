"""The pipeline runner: an Experiment's stages as a DAG, with a context per stage.

:func:`run_pipeline` is what a worker calls for ``experiment_step`` and
``evaluation`` jobs, and what a library user calls directly. Contract:

- **Stages.** Each enabled :class:`~crucible_core.ir.experiment.StageDef` is
  built from the registration of kind ``stage`` named by its ``uses``:
  ``host.get("stage", uses).create(**options)``. So a stage factory sees its
  options at construction (and can refuse bad ones before anything runs);
  the same options are also on ``ctx.options``. Every stage is resolved and
  built before the first one runs, so a misspelt ``uses`` costs nothing.
- **Order.** Topological (:mod:`crucible_core.runtime.dag`). A stage starts when
  all its enabled dependencies succeeded; independent stages run
  concurrently on ``executor`` (default: a thread pool of up to 4). A stage
  with ``enabled = false`` is skipped: its dependents still run and simply
  do not find it in ``ctx.inputs``. A dependency cycle is a
  :class:`~crucible_core.errors.ConfigError` naming it.
- **Failure.** A failing stage's dependents (transitively) are skipped;
  independent branches finish. Then the pipeline raises the first failure,
  same error class (so ``retryable`` still drives the scheduler's retry
  policy), its message prefixed ``stage 'NAME' failed:`` and ``stage`` in
  its details.
- **Cancellation.** ``cancel`` is polled before each stage starts and is the
  parent of every stage's ``ctx.cancel``; once set, no stage starts, running
  ones are left to stop cooperatively, and :class:`~crucible_core.errors.Cancelled`
  is raised. A KeyboardInterrupt in the calling thread sets the stages' flags
  (reason ``interrupted``), waits for the running stages to stop, records the
  run ``interrupted`` and is re-raised.
- **Status.** The manifest's ``status`` is ``running`` while the stages run,
  then one of the run statuses of :mod:`crucible_core.runtime.runstatus`
  (``budget_exhausted``, ``cancelled``, ``interrupted`` by the error class and
  cancellation reason; ``failed`` for other errors).
- **Records.** Events ``run.start`` (``job_kind``, ``experiment_id``,
  ``name``, ``config_digest``, ``dataset`` ``{uri, hash}``, ``attempt``,
  ``execution``: 1 on the run directory's first pipeline, then 2, 3... for
  retries and resumes (the manifest's ``executions``), ``parent_job_id``
  from ``job.metadata``) and, once per run whatever ends it,
  ``run.end`` (``status``: the run status; ``error``; ``artifacts``: what the
  stages stored, ``{artifact_id, uri, sha256, type, name, stage}``) frame
  ``stage.start`` / ``stage.end`` (``status`` ok, error or skipped;
  ``duration_ms``) on ``bus``; ``runs/<job_id>/manifest.json``
  gets the config digest, dataset, seed, timestamps, per-stage status and
  every artifact a stage stores through ``ctx.artifacts``; lineage gets a
  Trace with one span per stage, ``consumes`` the dataset and ``produces``
  each artifact.

Returns ``{stage name: outputs}`` for the stages that ran (outputs are what
``Stage.run`` returned, ``{}`` for None).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from crucible_core.contracts import ArtifactStore, CancelToken, Executor, Future, Stage
from crucible_core.errors import (
    BackendError,
    Cancelled,
    ConfigError,
    CrucibleError,
    NotFound,
    PluginError,
)
from crucible_core.ir.experiment import Experiment, StageDef
from crucible_core.ir.lineage import Artifact, ArtifactType, Edge, Span, Trace
from crucible_core.ir.work import Job
from crucible_core.runtime import paths
from crucible_core.runtime._errors import reworded
from crucible_core.runtime.artifacts import (
    LocalArtifactStore,
    add_artifact,
    config_digest,
    digest_path,
    environment_info,
    read_manifest,
    update_manifest,
)
from crucible_core.runtime.cancel import CancelFlag, reason_of
from crucible_core.runtime.events import EventBus
from crucible_core.runtime.runstatus import status_for

if TYPE_CHECKING:
    from crucible_core.plugins import PluginHost
    from crucible_core.runtime.lineage import LineageRecorder

__all__ = ["BackendResolver", "PipelineStageContext", "run_pipeline"]

#: ``resolver(name)`` returns a backend; ``name=None`` means the experiment's default.
BackendResolver = Callable[[str | None], Any]


class _RecordingStore:
    """The store a stage sees: stores by content, then lists the file in the run's records."""

    def __init__(self, run: _Run, stage: str) -> None:
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
        add_artifact(self._run.run_dir, artifact, path=Path(path))
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


class _Run:
    """State shared by the stages of one pipeline run."""

    def __init__(
        self,
        experiment: Experiment,
        job: Job,
        *,
        host: PluginHost | None,
        bus: EventBus,
        store: ArtifactStore,
        cancel: CancelFlag,
        backend_resolver: BackendResolver | None,
    ) -> None:
        self.experiment = experiment
        self.job = job
        self.host = host
        self.bus = bus
        self.store = store
        self.cancel = cancel
        self.run_dir = paths.run_dir(job.id)
        self.lock = threading.Lock()
        self.artifacts: list[Artifact] = []
        self._resolver = backend_resolver
        self._backends: dict[str | None, Any] = {}

    def emit(self, kind: str, /, **data: Any) -> None:
        step = data.pop("step", None)
        epoch = data.pop("epoch", None)
        self.bus.emit(kind, job_id=self.job.id, step=step, epoch=epoch, **data)

    def get_host(self) -> PluginHost:
        if self.host is None:
            from crucible_core.plugins import get_host

            self.host = get_host()
        return self.host

    def backend(self, name: str | None) -> Any:
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
        if (ref.fallbacks or ref.name == "routed") and "routed" in host.registrations("backend"):
            # crucible-router is installed: fallbacks are honoured per call (circuit
            # breakers, fail-over on retryable errors), not only when creating the backend;
            # its events go to this run's telemetry.
            options: dict[str, Any] = dict(ref.options)
            if ref.name != "routed":
                options = {"primary": {"name": ref.name, "options": options}}
            if ref.fallbacks:
                options["fallbacks"] = [*options.get("fallbacks", ()), *ref.fallbacks]
            options.update(bus=self.bus, job_id=self.job.id, host=host)
            return host.create("backend", "routed", **options)
        tried: list[str] = []
        for candidate in [ref.name, *ref.fallbacks]:
            options = ref.options if candidate == ref.name else {}
            try:
                backend = host.create("backend", candidate, **options)
            except (NotFound, PluginError, BackendError) as exc:
                tried.append(f"{candidate} ({exc.message})")
                continue
            if tried:
                self.emit("backend.fallback", backend=candidate, skipped=tried)
            return backend
        raise BackendError(
            f"no backend of experiment {self.experiment.id!r} could be created: "
            + "; ".join(tried),
            hint="install the backend's plugin, or list working fallbacks in [backend].fallbacks",
        )


class PipelineStageContext:
    """What one stage gets; satisfies :class:`crucible_core.contracts.StageContext`.

    Beyond the contract: ``stage`` (its StageDef), ``bus`` and ``host``.
    """

    def __init__(self, run: _Run, stage: StageDef, inputs: Mapping[str, Mapping[str, Any]]):
        self._run = run
        self.stage = stage
        self._inputs = inputs
        self._cancel = CancelFlag(parent=run.cancel)
        self._artifacts = _RecordingStore(run, stage.name)

    @property
    def job_id(self) -> str:
        return self._run.job.id

    @property
    def job(self) -> Job:
        return self._run.job

    @property
    def experiment(self) -> Experiment:
        return self._run.experiment

    @property
    def run_dir(self) -> Path:
        return self._run.run_dir

    @property
    def options(self) -> Mapping[str, Any]:
        return self.stage.options

    @property
    def inputs(self) -> Mapping[str, Mapping[str, Any]]:
        return self._inputs

    @property
    def cancel(self) -> CancelFlag:
        return self._cancel

    @property
    def artifacts(self) -> ArtifactStore:
        return self._artifacts

    @property
    def bus(self) -> EventBus:
        return self._run.bus

    @property
    def host(self) -> PluginHost:
        return self._run.get_host()

    def backend(self, name: str | None = None) -> Any:
        """The experiment's backend (``name=None``, with its fallbacks) or another by name."""
        return self._run.backend(name)

    def emit(self, kind: str, /, **data: Any) -> None:
        """Emit an event for this job; ``step``/``epoch`` keywords fill those fields."""
        data.setdefault("stage", self.stage.name)
        self._run.emit(kind, **data)


def _check_dag(experiment: Experiment) -> list[str]:
    """Stage names in a topological order; ConfigError for unknown deps or a cycle."""
    from crucible_core.runtime.dag import find_cycle, topological_order

    names = [s.name for s in experiment.stages]
    known = set(names)
    for stage in experiment.stages:
        for dep in stage.depends_on:
            if dep not in known:
                raise ConfigError(
                    f"stage {stage.name!r} depends on unknown stage {dep!r}",
                    hint=f"stages: {', '.join(names)}",
                )
    depends_on = {s.name: list(s.depends_on) for s in experiment.stages}
    cycle = find_cycle(depends_on)
    if cycle is None:
        return topological_order(names, depends_on)
    path = cycle[::-1]  # shown in the order stages would run: a -> b means b waits for a
    raise ConfigError(
        f"the stages of experiment {experiment.id!r} form a cycle: {' -> '.join(path)}",
        hint="a stage cannot wait for itself; remove one of these depends_on entries",
        cycle=path,
    )


def _build_stage(host: PluginHost, sd: StageDef) -> Stage:
    reg = host.get("stage", sd.uses)
    try:
        return cast(Stage, reg.create(**sd.options))
    except CrucibleError as exc:
        if "refused_options" in exc.details:  # the host's check of the options
            raise reworded(exc, f"stage {sd.name!r}: {exc.message}", stage=sd.name) from exc
        raise _stage_error(sd.name, exc) from exc
    except Exception as exc:  # the factory itself refused them
        raise ConfigError(
            f"stage {sd.name!r}: {sd.uses!r} (plugin {reg.plugin!r}) refused its options "
            f"{sorted(sd.options)}: {type(exc).__name__}: {exc}",
            hint="check the stage's options against its plugin's documentation",
            stage=sd.name,
        ) from exc


def _stage_error(name: str, exc: BaseException) -> CrucibleError:
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


def _wait_any(futures: Mapping[Future[Any], str]) -> list[Future[Any]]:
    """The futures that are done, waiting (without polling) until at least one is."""
    native = [f for f in futures if isinstance(f, cf.Future)]
    if len(native) == len(futures):
        done, _ = cf.wait(native, return_when=cf.FIRST_COMPLETED)
        return list(done)
    # A plugin executor's futures need only result() and done(): a daemon thread per
    # future waits on result() and wakes this one (a future with add_done_callback
    # is asked to call back instead).
    wake = threading.Event()

    def on_done(_: object) -> None:
        wake.set()

    for f in futures:
        add_done_callback = getattr(f, "add_done_callback", None)
        if callable(add_done_callback):
            add_done_callback(on_done)
        else:
            threading.Thread(target=_wake_when_done, args=(f, wake), daemon=True).start()
    while True:
        wake.clear()
        done = [f for f in futures if f.done()]
        if done:
            return done
        wake.wait()


def _wake_when_done(future: Future[Any], wake: threading.Event) -> None:
    with contextlib.suppress(BaseException):  # the caller reads the outcome itself
        future.result()
    wake.set()


def _iso(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def run_pipeline(
    experiment: Experiment,
    job: Job,
    *,
    host: PluginHost | None = None,
    executor: Executor | None = None,
    bus: EventBus | None = None,
    store: ArtifactStore | None = None,
    cancel: CancelToken | None = None,
    backend_resolver: BackendResolver | None = None,
    lineage: LineageRecorder | None = None,
) -> dict[str, Mapping[str, Any]]:
    """Run ``experiment``'s stage DAG as job ``job``; see the module docstring."""
    if not job.id:
        raise ConfigError(
            "run_pipeline needs a job with an id", hint="Job(id=...) names the run directory"
        )
    order = _check_dag(experiment)
    by_name = {s.name: s for s in experiment.stages}
    enabled = [n for n in order if by_name[n].enabled]
    own_bus = bus is None
    run = _Run(
        experiment,
        job,
        host=host,
        bus=bus if bus is not None else EventBus(host=host if host is not None else _host()),
        store=store if store is not None else LocalArtifactStore(),
        # Our own flag (child of the caller's): Ctrl-C in the waiting thread sets it.
        cancel=CancelFlag(parent=cancel),
        backend_resolver=backend_resolver,
    )
    stages: dict[str, Stage] = {}
    if enabled:
        h = run.get_host()
        for name in enabled:
            stages[name] = _build_stage(h, by_name[name])
    own_executor = executor is None
    pool: Executor = executor if executor is not None else _default_executor(len(enabled))
    started = time.time()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "job_id": job.id,
        "kind": job.kind,
        "experiment_id": experiment.id,
        "config_digest": config_digest(experiment),
        "seed": experiment.seeds[0] if experiment.seeds else None,
        "started_at": _iso(started).isoformat(),
        "status": "running",
        "executions": _executions(run.run_dir) + 1,
    }
    if experiment.dataset is not None:
        manifest["dataset"] = {
            "uri": experiment.dataset.uri,
            "hash": _dataset_hash(experiment.dataset.uri),
        }
    if run.host is not None:
        manifest["environment"] = environment_info(run.host)
    update_manifest(run.run_dir, **manifest)
    run.emit(
        "run.start",
        job_kind=job.kind,
        experiment_id=experiment.id,
        name=experiment.name or experiment.id,
        config_digest=manifest["config_digest"],
        dataset=manifest.get("dataset"),
        attempt=job.attempts,
        execution=manifest["executions"],
        parent_job_id=job.metadata.get("parent_job_id"),
    )

    outputs: dict[str, Mapping[str, Any]] = {}
    status: dict[str, str] = {n: "disabled" for n in order if not by_name[n].enabled}
    spans: dict[str, tuple[float, float | None, str, str | None]] = {}
    failures: list[tuple[str, BaseException]] = []
    running: dict[Future[Any], str] = {}
    # Event-driven readiness: each stage counts its unfinished enabled dependencies.
    deps_of = {n: [d for d in by_name[n].depends_on if by_name[d].enabled] for n in enabled}
    dependents: dict[str, list[str]] = {n: [] for n in enabled}
    for n, deps in deps_of.items():
        for d in deps:
            dependents[d].append(n)
    waiting = {n: len(deps) for n, deps in deps_of.items()}
    ready: list[str] = [n for n in enabled if waiting[n] == 0]
    unresolved = set(enabled)

    def skip(name: str) -> None:
        todo = [name]
        while todo:
            n = todo.pop()
            if n not in unresolved:
                continue
            unresolved.discard(n)
            status[n] = "skipped"
            run.emit("stage.end", stage=n, status="skipped", duration_ms=0.0)
            todo.extend(dependents[n])

    aborted: BaseException | None = None
    try:
        while unresolved:
            if run.cancel.is_set():
                for name in [n for n in enabled if n in unresolved and status.get(n) != "running"]:
                    skip(name)
                ready.clear()
            for name in ready:
                inputs = {d: outputs[d] for d in deps_of[name]}
                ctx = PipelineStageContext(run, by_name[name], inputs)
                status[name] = "running"
                spans[name] = (time.time(), None, "running", None)
                run.emit("stage.start", stage=name, uses=by_name[name].uses)
                running[pool.submit(stages[name].run, ctx)] = name
            ready.clear()
            if not running:
                if unresolved:  # cannot happen for an acyclic graph
                    raise CrucibleError(f"stages {sorted(unresolved)} can never start")
                break
            for fut in _wait_any(running):
                name = running.pop(fut)
                unresolved.discard(name)
                begin = spans[name][0]
                end = time.time()
                duration_ms = (end - begin) * 1000
                try:
                    result = fut.result()
                except BaseException as exc:
                    failures.append((name, exc))
                    status[name] = "error"
                    spans[name] = (begin, end, "error", f"{type(exc).__name__}: {exc}")
                    run.emit(
                        "stage.end",
                        stage=name,
                        status="error",
                        duration_ms=duration_ms,
                        error=str(exc),
                    )
                    for child in dependents[name]:
                        skip(child)
                    continue
                outputs[name] = dict(result) if result is not None else {}
                status[name] = "ok"
                spans[name] = (begin, end, "ok", None)
                run.emit("stage.end", stage=name, status="ok", duration_ms=duration_ms)
                for child in dependents[name]:
                    waiting[child] -= 1
                    if waiting[child] == 0 and child in unresolved:
                        ready.append(child)
    except BaseException as exc:
        # Ctrl-C (or any error) while waiting: ask running stages to stop at their next
        # safe point (a training loop saves a checkpoint there) before recording the end.
        aborted = exc
        run.cancel.set("interrupted" if isinstance(exc, KeyboardInterrupt) else "cancelled")
        raise
    finally:
        for fut in running:
            with contextlib.suppress(Exception):
                fut.result()
        if own_executor:
            pool.shutdown(wait=True)
        final = status_for(
            failures[0][1] if failures else aborted,
            cancel_reason=(reason_of(run.cancel) or "cancelled") if run.cancel.is_set() else None,
        )
        _record(run, lineage, spans, started, final)
        update_manifest(
            run.run_dir,
            status=final,
            finished_at=_iso(time.time()).isoformat(),
            stages={n: {"status": s} | _timing(spans.get(n)) for n, s in status.items()},
        )
        run.emit(
            "run.end",
            status=final,
            error=_error_text(failures[0][1] if failures else aborted),
            artifacts=[
                {
                    "artifact_id": a.artifact_id,
                    "uri": a.uri,
                    "sha256": a.sha256,
                    "type": a.type,
                    "name": a.metadata.get("name"),
                    "stage": a.metadata.get("stage"),
                }
                for a in run.artifacts
            ],
        )
        if own_bus:
            run.bus.close()
    if failures:
        name, exc = failures[0]
        err = _stage_error(name, exc)
        if len(failures) > 1:
            err.message += f" (also failed: {', '.join(n for n, _ in failures[1:])})"
        raise err
    if run.cancel.is_set():
        skipped = [n for n, s in status.items() if s == "skipped"]
        raise Cancelled(
            f"pipeline of job {job.id!r} was cancelled"
            + (f"; stages not run: {', '.join(skipped)}" if skipped else ""),
            reason=reason_of(run.cancel),
        )
    return outputs


def _host() -> PluginHost:
    from crucible_core.plugins import get_host

    return get_host()


def _default_executor(n: int) -> Executor:
    from crucible_core.runtime.executors import InlineExecutor, ThreadExecutor

    return (
        ThreadExecutor(max_workers=min(4, n), name="crucible-stage") if n > 1 else InlineExecutor()
    )


def _executions(run_dir: Path) -> int:
    """How many times a pipeline has started on this run directory (retries, resumes)."""
    try:
        count = read_manifest(run_dir).get("executions")
    except CrucibleError:
        return 0
    return count if isinstance(count, int) else 0


def _error_text(exc: BaseException | None) -> str | None:
    return None if exc is None else f"{type(exc).__name__}: {exc}"


def _timing(span: tuple[float, float | None, str, str | None] | None) -> dict[str, Any]:
    if span is None or span[1] is None:
        return {}
    return {"duration_ms": round((span[1] - span[0]) * 1000, 3)}


def _dataset_hash(uri: str) -> str | None:
    """sha256 of a local dataset file (None for remote or generated data)."""
    path = Path(uri)
    if not path.is_file():
        return None
    return digest_path(path)[0]


def _record(
    run: _Run,
    lineage: LineageRecorder | None,
    spans: Mapping[str, tuple[float, float | None, str, str | None]],
    started: float,
    final: str,
) -> None:
    job = run.job
    edges: list[Edge] = [
        Edge(src=job.id, dst=a.artifact_id, kind="produces", metadata=dict(a.metadata))
        for a in run.artifacts
    ]
    if run.experiment.dataset is not None:
        edges.append(Edge(src=job.id, dst=f"dataset:{run.experiment.dataset.uri}", kind="consumes"))
    trace = Trace(
        trace_id=job.id,
        spans=[
            Span(
                span_id=f"{job.id}/{name}",
                trace_id=job.id,
                name=name,
                start=_iso(begin),
                end=_iso(end) if end is not None else None,
                status="ok" if st == "ok" else "error" if st == "error" else "running",
                attributes={"error": err} if err else {},
            )
            for name, (begin, end, st, err) in spans.items()
        ],
        artifacts=list(run.artifacts),
        edges=edges,
        metadata={
            "kind": job.kind,
            "experiment_id": run.experiment.id,
            "status": final,
            "started_at": _iso(started).isoformat(),
        },
    )
    if lineage is not None:
        lineage.record_trace(trace, label=run.experiment.name or run.experiment.id)
        return
    from crucible_core.runtime.lineage import LineageRecorder

    with LineageRecorder() as recorder:
        recorder.record_trace(trace, label=run.experiment.name or run.experiment.id)

"""The pipeline runner: an Experiment's stages as a DAG, with a context per stage.

:func:`run_pipeline` is what a worker calls for ``experiment_step`` and
``evaluation`` jobs, and what a library user calls directly. Contract:

- **Stages.** Each enabled :class:`~crucible_core.ir.experiment.StageDef` is
  built from the registration of kind ``stage`` named by its ``uses``:
  ``host.get("stage", uses).create(**options)``. So a stage factory sees its
  options at construction (and can refuse bad ones before anything runs);
  the same options are also on ``ctx.options``. Every stage is resolved and
  built before the first one runs, so a misspelt ``uses`` costs nothing.
- **Order.** Topological (:mod:`crucible_core.pipeline.dag`). A stage starts when
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
  then one of the run statuses of :mod:`crucible_core.records.runstatus`
  (``budget_exhausted``, ``cancelled``, ``interrupted`` by the error class and
  cancellation reason; ``failed`` for other errors).
- **Records.** The run is recorded by a
  :class:`~crucible_core.pipeline.scope.RunScope` (the same as a recipe's):
  ``run.start``, ``stage.start``/``stage.end`` per stage, the manifest's
  status and per-stage timing, every artifact a stage stores through
  ``ctx.artifacts``, a lineage Trace with a span per stage, and ``run.end``
  once, whatever ends the run.

Returns ``{stage name: outputs}`` for the stages that ran (outputs are what
``Stage.run`` returned, ``{}`` for None).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from crucible_core._errors import reworded
from crucible_core.contracts import ArtifactStore, CancelToken, Executor, Future, Stage
from crucible_core.errors import Cancelled, ConfigError, CrucibleError
from crucible_core.ir.experiment import Experiment, StageDef
from crucible_core.ir.work import Job
from crucible_core.pipeline.cancel import reason_of
from crucible_core.pipeline.scope import BackendResolver, RunScope, StepContext, stage_error
from crucible_core.records.events import EventBus

if TYPE_CHECKING:
    from crucible_core.plugins import PluginHost
    from crucible_core.records.lineage import LineageRecorder

__all__ = ["BackendResolver", "PipelineStageContext", "run_pipeline"]

#: The context a pipeline stage runs with (kept under its historical name).
PipelineStageContext = StepContext


def _check_dag(experiment: Experiment) -> list[str]:
    """Stage names in a topological order; ConfigError for unknown deps or a cycle."""
    from crucible_core.pipeline.dag import find_cycle, topological_order

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
        raise stage_error(sd.name, exc) from exc
    except Exception as exc:  # the factory itself refused them
        raise ConfigError(
            f"stage {sd.name!r}: {sd.uses!r} (plugin {reg.plugin!r}) refused its options "
            f"{sorted(sd.options)}: {type(exc).__name__}: {exc}",
            hint="check the stage's options against its plugin's documentation",
            stage=sd.name,
        ) from exc


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
    run = RunScope(
        experiment,
        job,
        host=host,
        bus=bus,
        store=store,
        cancel=cancel,
        backend_resolver=backend_resolver,
        lineage=lineage,
    )
    stages: dict[str, Stage] = {}
    if enabled:
        h = run.get_host()
        for name in enabled:
            stages[name] = _build_stage(h, by_name[name])
    own_executor = executor is None
    pool: Executor = executor if executor is not None else _default_executor(len(enabled))
    run.open()
    for n in order:
        if not by_name[n].enabled:
            run.status[n] = "disabled"
    outputs: dict[str, Mapping[str, Any]] = {}
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
            run.skipped(n)
            todo.extend(dependents[n])

    aborted: BaseException | None = None
    try:
        while unresolved:
            if run.cancel.is_set():
                for name in [
                    n for n in enabled if n in unresolved and run.status.get(n) != "running"
                ]:
                    skip(name)
                ready.clear()
            for name in ready:
                ctx = run.context(by_name[name], {d: outputs[d] for d in deps_of[name]})
                run.started(by_name[name])
                running[pool.submit(stages[name].run, ctx)] = name
            ready.clear()
            if not running:
                if unresolved:  # cannot happen for an acyclic graph
                    raise CrucibleError(f"stages {sorted(unresolved)} can never start")
                break
            for fut in _wait_any(running):
                name = running.pop(fut)
                unresolved.discard(name)
                try:
                    result = fut.result()
                except BaseException as exc:
                    failures.append((name, exc))
                    run.ended(name, exc)
                    for child in dependents[name]:
                        skip(child)
                    continue
                outputs[name] = dict(result) if result is not None else {}
                run.ended(name)
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
        run.close(failures[0][1] if failures else aborted)
    if failures:
        name, exc = failures[0]
        err = stage_error(name, exc)
        if len(failures) > 1:
            err.message += f" (also failed: {', '.join(n for n, _ in failures[1:])})"
        raise err
    if run.cancel.is_set():
        skipped = [n for n, s in run.status.items() if s == "skipped"]
        raise Cancelled(
            f"pipeline of job {job.id!r} was cancelled"
            + (f"; stages not run: {', '.join(skipped)}" if skipped else ""),
            reason=reason_of(run.cancel),
        )
    return outputs


def _default_executor(n: int) -> Executor:
    from crucible_core.pipeline.executors import InlineExecutor, ThreadExecutor

    return (
        ThreadExecutor(max_workers=min(4, n), name="crucible-stage") if n > 1 else InlineExecutor()
    )

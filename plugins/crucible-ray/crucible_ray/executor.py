"""``RayExecutor``: the ``ray`` executor, for callables and for worker jobs.

As an :class:`~crucible_core.contracts.Executor`, ``submit(fn, ...)`` runs
``fn`` as a Ray task (one CPU) and returns a ``concurrent.futures.Future``;
cancelling that future calls ``ray.cancel(force=True)``.

As the worker's job runner (``crucible worker --executor ray``),
:meth:`RayExecutor.run_job` runs one claimed job as a Ray task asking for
its ``ResourceSpec`` (:func:`crucible_ray.resources.ray_options`), streams
its events back while it runs, and when the job's cancel flag is set
(cancel request, timeout, lease lost, shutdown) cancels the task and waits
at most ``cancel_grace_s`` for Ray to confirm.

**Failures.** Ray never retries (``max_retries=0``): the durable queue is
the source of truth. A task lost with its process, node or cluster fails
the attempt with a retryable ``BackendError`` (``code`` ``ray_lost``... see
:func:`_lost`), so the scheduler requeues it; if the worker process itself
dies, its lease lapses and another worker takes the job. An exception the
job raises comes back unchanged.

**Where.** ``address``: ``"local"`` starts a private Ray instance for this
process (``num_cpus`` caps it); ``"auto"`` joins the cluster this machine is
part of (``ray start``); ``"ray://host:10001"`` connects through Ray Client;
any other ``host:port`` is passed to ``ray.init`` as is. If Ray is already
initialised in this process (a test's session, a notebook) it is used as is
and left running on :meth:`shutdown`. ``runtime_env`` (a mapping, or JSON in
``$CRUCIBLE_RAY_RUNTIME_ENV``) is given to ``ray.init``: on an existing
cluster it ships the code jobs need (``working_dir``, ``pip``).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from crucible_core.errors import BackendError, Cancelled, ConfigError
from crucible_core.records import paths
from crucible_core.records.events import Event, EventBus
from crucible_ray import remote
from crucible_ray._ray import import_ray
from crucible_ray.resources import ray_options

if TYPE_CHECKING:
    from crucible_core.queue.worker import JobContext

__all__ = ["RUNTIME_ENV_VAR", "RayExecutor"]

log = logging.getLogger("crucible.ray")

RUNTIME_ENV_VAR: Final = "CRUCIBLE_RAY_RUNTIME_ENV"
_POLL_S: Final = 0.05
_decoder = msgspec.msgpack.Decoder(Event)


class _RayFuture(cf.Future[Any]):
    """A Future whose ``cancel()`` also cancels the Ray task behind it."""

    def __init__(self, ray: Any, ref: Any) -> None:
        super().__init__()
        self._ray = ray
        self._ref = ref

    def cancel(self) -> bool:
        if self.done():
            return False
        self._ray.cancel(self._ref, force=True)
        return super().cancel()


def _lost(ray: Any, exc: BaseException, what: str) -> BackendError:
    """A Ray-side failure (not the job's own): retryable unless the task itself broke."""
    task_error = isinstance(exc, ray.exceptions.RayTaskError)
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return BackendError(
        f"{what} failed on Ray: {type(exc).__name__}: {first_line}",
        retryable=not task_error,
        hint=None if task_error else "the scheduler requeues it; check the Ray cluster",
        where="ray",
        ray_error=type(exc).__name__,
    )


def _runtime_env(given: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if given is not None:
        return dict(given)
    raw = os.environ.get(RUNTIME_ENV_VAR, "").strip()
    if not raw:
        return None
    try:
        value = json.loads(Path(raw).read_text() if not raw.startswith("{") else raw)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"${RUNTIME_ENV_VAR} is neither a JSON object nor a readable JSON file: {exc}",
            hint='set it to e.g. {"working_dir": ".", "pip": ["crucible-local"]}',
            option=RUNTIME_ENV_VAR,
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"${RUNTIME_ENV_VAR} must hold a JSON object", option=RUNTIME_ENV_VAR)
    return value


class RayExecutor:
    """Runs callables and jobs as Ray tasks (module docstring)."""

    def __init__(
        self,
        address: str = "local",
        *,
        num_cpus: int | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        cancel_grace_s: float = 10.0,
    ) -> None:
        if not isinstance(address, str) or not address.strip():  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ConfigError(
                f"address {address!r} is not a Ray address",
                hint="use local, auto, ray://host:10001 or host:port",
                option="address",
            )
        if num_cpus is not None and (isinstance(num_cpus, bool) or num_cpus < 1):
            raise ConfigError(f"num_cpus must be >= 1, got {num_cpus!r}", option="num_cpus")
        ray = import_ray()
        self._ray = ray
        self.address = address
        self.cancel_grace_s = cancel_grace_s
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            init: dict[str, Any] = {
                "include_dashboard": False,
                "runtime_env": _runtime_env(runtime_env),
            }
            if address == "local":
                init["address"] = "local"
                init["num_cpus"] = num_cpus
            else:
                init["address"] = address
            try:
                ray.init(**init)
            except ConnectionError as exc:
                raise ConfigError(
                    f"cannot reach a Ray cluster at {address!r}: {exc}",
                    hint="start one (ray start --head) or use --address local",
                    option="address",
                ) from None
        self._call = ray.remote(max_retries=0)(remote.call)
        self._job = ray.remote(max_retries=0)(remote.run_job)
        self._lock = threading.Lock()
        self._pending: set[cf.Future[Any]] = set()
        self._shut = False
        self._queue: Any = None
        self._buses: dict[str, EventBus] = {}
        self._pump_lock = threading.Lock()

    # -- Executor --------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot submit to an executor that was shut down")
            ref = self._call.remote(fn, args, kwargs)
            future = _RayFuture(self._ray, ref)
            self._pending.add(future)
        ref.future().add_done_callback(lambda done: self._settle(future, done))
        return future

    def _settle(self, future: cf.Future[Any], done: cf.Future[Any]) -> None:
        try:
            ok, value = done.result()
        except BaseException as exc:
            ok, value = False, _lost(self._ray, exc, "a task")
        try:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        except cf.InvalidStateError:
            pass  # cancelled meanwhile
        with self._lock:
            self._pending.discard(future)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._shut = True
            pending = list(self._pending)
        if wait:
            cf.wait(pending)
        else:
            for f in pending:
                f.cancel()
        if self._queue is not None and self._ray.is_initialized():
            self._ray.kill(self._queue.actor)
        self._queue = None
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()

    # -- worker jobs -----------------------------------------------------------

    def _events(self) -> Any:
        with self._lock:
            if self._queue is None:
                from ray.util.queue import Queue

                self._queue = Queue(actor_options={"num_cpus": 0})
            return self._queue

    def _pump(self) -> None:
        """Publish the events nodes have sent so far on their jobs' buses."""
        queue = self._queue
        if queue is None:
            return
        with self._pump_lock:
            size = queue.qsize()
            if not size:
                return
            for raw in queue.get_nowait_batch(size):
                event = _decoder.decode(raw)
                bus = self._buses.get(event.job_id)
                if bus is not None:
                    bus.publish(event)

    def _pump_quietly(self) -> None:
        """Deliver what can be delivered while failing: the job's own error matters more."""
        try:
            self._pump()
        except Exception as exc:
            log.warning("events of a failed Ray job could not be fetched: %s", exc)

    def run_job(self, ctx: JobContext) -> Any:
        """Run ``ctx.job`` as a Ray task; its result, or its exception raised here."""
        ray = self._ray
        job = ctx.job
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot run a job on an executor that was shut down")
        queue = self._events()
        self._buses[job.id] = ctx.bus
        try:
            ref = self._job.options(
                name=f"crucible-job-{job.id}", **ray_options(job.resources)
            ).remote(job, ctx.resume_from, str(paths.crucible_home().resolve()), queue)
            try:
                ok, value, sent = self._wait(ctx, ref)
            except (Cancelled, ConfigError):
                self._pump_quietly()
                raise
            except Exception as exc:
                self._pump_quietly()
                raise _lost(ray, exc, f"job {job.id!r}") from exc
            if sent:
                self._pump()  # the node's puts returned before its result: all are queued
        finally:
            self._buses.pop(job.id, None)
        if ok:
            return value
        raise value

    def _wait(self, ctx: JobContext, ref: Any) -> tuple[bool, Any, int]:
        ray = self._ray
        while True:
            ready, _ = ray.wait([ref], timeout=_POLL_S)
            if ready:
                return ray.get(ref)
            self._pump()
            if ctx.cancel.is_set():
                ray.cancel(ref, force=True)
                deadline = time.monotonic() + self.cancel_grace_s
                while time.monotonic() < deadline:
                    ready, _ = ray.wait([ref], timeout=_POLL_S)
                    if ready:
                        break
                raise Cancelled(
                    f"job {ctx.job_id!r}: its Ray task was cancelled ({ctx.cancel.reason})"
                    + ("" if ready else f"; Ray had not confirmed after {self.cancel_grace_s:g} s")
                )

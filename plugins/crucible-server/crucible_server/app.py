"""The FastAPI application: jobs, events, artifacts, health, metrics, OpenAPI.

Importing this module imports fastapi: the CLI imports it only when serving.

:func:`build_app` wires a :class:`~crucible_core.queue.scheduler.Scheduler`
and an optional :class:`~crucible_server.tokens.TokenStore` into an ASGI app.
It holds no job state of its own: every answer comes from the scheduler's
database or from the run directories under ``$CRUCIBLE_HOME``, so any number
of API processes and workers can share one home.

Contract:

- Every error is ``application/problem+json`` (RFC 9457) carrying the
  Crucible ``code``; its status comes from ``crucible_core.errors``' one table.
- A job of another tenant is answered exactly like a missing one (404).
- ``POST /v1/jobs`` commits the job before answering (201, or 200 with
  ``created: false`` when its ``Idempotency-Key`` was already used by the
  tenant: the first job is returned, nothing is enqueued).
- ``GET /v1/jobs/{id}/events`` is Server-Sent Events: event ``id`` is the
  line number in the run's telemetry.jsonl, so ``Last-Event-ID`` resumes
  without loss or repetition; comment heartbeats every ``heartbeat_s``; the
  stream ends with an ``end`` event (no id) once the job is terminal and its
  telemetry fully sent.
- Request bodies above ``max_body_bytes`` are refused (413) before they are
  read in full.
- ``GET /v1/jobs/{id}`` and ``POST /v1/jobs`` are answered by
  :mod:`crucible_server.fastpath` in front of FastAPI's middleware stack, with
  the same handlers and answers as their FastAPI routes (which answer instead
  with ``ServerSettings(fast_path=False)``).
"""

from __future__ import annotations

import base64
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
from fastapi import Depends, FastAPI, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, PlainTextResponse, Response

from crucible_core.errors import ConfigError, CrucibleError, NotFound
from crucible_core.ids import new_id
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.experiment import Experiment
from crucible_core.ir.training import TrainingJob
from crucible_core.ir.work import Job
from crucible_core.records.events import Event
from crucible_core.records.paths import run_dir
from crucible_core.train.state import STATE_FILE
from crucible_server.auth import Principal, RateLimiter
from crucible_server.fastpath import IDEMPOTENCY_KEY_MAX, HotRoutes
from crucible_server.feeds import Feeds
from crucible_server.filecache import StatCache
from crucible_server.filehash import Sha256Cache
from crucible_server.groupcommit import GroupCommit
from crucible_server.guards import (
    authorize,
    owned_job,
    owned_job_and_checkpoint,
    requires,
    too_large,
)
from crucible_server.problems import PROBLEM_JSON, PROBLEM_SCHEMA, problem_body
from crucible_server.routes import ApiContext, mount_plugin_routes
from crucible_server.submit import job_from_body, plan_problems
from crucible_server.telemetry import ProgressCache
from crucible_server.tokens import TokenStore
from crucible_server.views import (
    ArtifactEntry,
    ArtifactList,
    JobPage,
    JobView,
    Submitted,
    links,
)

if TYPE_CHECKING:
    from crucible_core.plugins import PluginHost
    from crucible_core.queue.scheduler import Scheduler

__all__ = ["API_VERSION", "ServerSettings", "build_app", "openapi_document"]

API_VERSION: Final = "1.0.0"
_encoder = msgspec.json.Encoder()
_MAX_PAGE: Final = 500
_JOBS_HINT: Final = "`GET /v1/jobs` lists your jobs"


@dataclass(frozen=True)
class ServerSettings:
    """Limits and timings of one API instance."""

    max_body_bytes: int = 1 << 20
    rate_per_s: float = 200.0
    rate_burst: int = 400
    heartbeat_s: float = 15.0
    poll_s: float = 0.1
    #: Relative paths in submitted jobs are resolved against this directory.
    base_dir: Path = field(default_factory=Path.cwd)
    #: Refuse training jobs whose plan (capabilities only) cannot run.
    check_plan: bool = True
    #: Answer ``GET /v1/jobs/{id}`` and ``POST /v1/jobs`` without FastAPI's per-request
    #: machinery (:mod:`crucible_server.fastpath`); the answers are the same either way.
    fast_path: bool = True


class _BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _problem_response(too_large(self.limit))(scope, receive, send)
                return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large(self.limit)
            return message

        await self.app(scope, limited, send)


def _problem_response(exc: CrucibleError) -> Response:
    status, body = problem_body(exc)
    headers = {}
    retry = exc.details.get("retry_after_s")
    if isinstance(retry, int | float):
        headers["Retry-After"] = str(max(1, round(retry + 0.5)))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(_encoder.encode(body), status, headers=headers, media_type=PROBLEM_JSON)


def _error_response(exc: Exception) -> Response:
    """The problem+json answer to any exception (a bug is a 500 naming only its type)."""
    if not isinstance(exc, CrucibleError):
        exc = CrucibleError(f"internal error: {type(exc).__name__}")
    return _problem_response(exc)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(obj), status, media_type="application/json")


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_PROBLEM_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    "4XX": {
        "description": "problem",
        "content": {PROBLEM_JSON: {"schema": _schema_ref("Problem")}},
    },
    "5XX": {
        "description": "problem",
        "content": {PROBLEM_JSON: {"schema": _schema_ref("Problem")}},
    },
}


def _ok(name: str, status: int = 200) -> dict[int | str, dict[str, Any]]:
    return {status: {"description": name, **_json_content(_schema_ref(name))}, **_PROBLEM_RESPONSES}


def build_app(
    scheduler: Scheduler,
    *,
    tokens: TokenStore | None = None,
    settings: ServerSettings | None = None,
    host: PluginHost | None = None,
) -> FastAPI:
    """The API over ``scheduler``; with ``tokens`` every request needs a bearer token.

    Plugins add routes through the ``register_api_routes`` hook of ``host``
    (default: the process's plugin host); see :mod:`crucible_server.routes`.
    """
    cfg = settings or ServerSettings()
    limiter = RateLimiter(cfg.rate_per_s, cfg.rate_burst) if tokens is not None else None
    hashes = Sha256Cache()
    progress = ProgressCache()
    resume_points = StatCache(_resume_point)

    def checkpoint_of(job: Job, ref: CheckpointRef | None) -> CheckpointRef | None:
        """The job's resume point: the scheduler's record ``ref``, or a training run's
        trainer_state.json (read again only when it changed)."""
        if ref is not None or job.kind != "training_run":
            return ref
        return resume_points.get(os.path.join(run_dir(job.id), STATE_FILE))

    metrics = _Metrics(scheduler)
    heartbeat_s = cfg.heartbeat_s if cfg.heartbeat_s > 0 else None
    feeds = Feeds(scheduler, cfg.poll_s, run_in_threadpool, heartbeat_s)
    commits = GroupCommit(scheduler, run_in_threadpool)

    app = _App(
        title="Crucible API",
        version=API_VERSION,
        description="Submit, watch and manage Crucible jobs; see docs/server.md.",
        docs_url=None,
        redoc_url=None,
    )

    read = Depends(requires("jobs:read", tokens, limiter))
    write = Depends(requires("jobs:write", tokens, limiter))
    art = Depends(requires("artifacts:read", tokens, limiter))

    def owned(job_id: str, p: Principal) -> Job:
        return owned_job(scheduler, job_id, p, hint=_JOBS_HINT)

    # -- the hot handlers: called by their FastAPI routes and by the fast path ---

    async def submit(body: bytes, p: Principal, idempotency_key: str | None) -> Response:
        # Parsing is cheap and runs here; only a training job's plan (backends' capabilities,
        # maybe first imports) goes to the thread pool.
        job = job_from_body(body, principal=p, base=cfg.base_dir, idempotency_key=idempotency_key)
        if cfg.check_plan and job.kind == "training_run":
            problems = await run_in_threadpool(plan_problems, job)
            if problems:
                first = problems[0]
                raise ConfigError(
                    f"the plan refuses this job: {first.get('field')}: {first.get('message')}",
                    hint="POST /v1/plan shows the whole plan",
                    problems=problems,
                )
        job = msgspec.structs.replace(job, id=job.id or new_id("job", now=scheduler.now()))
        stored = await commits.enqueue(job)
        created = stored.id == job.id
        view = Submitted(
            job_id=stored.id,
            status=stored.status,
            created=created,
            url=f"/v1/jobs/{stored.id}",
            stream_url=f"/v1/jobs/{stored.id}/events",
        )
        return _json(view, 201 if created else 200)

    async def job_view(job_id: str, p: Principal) -> Response:
        # A coroutine: the reads (indexed SQLite rows in WAL mode, the telemetry's tail)
        # take microseconds, less than a hop to the thread pool and back.
        job, ref = owned_job_and_checkpoint(scheduler, job_id, p, hint=_JOBS_HINT)
        return _json(
            JobView(
                job=job,
                progress=progress.of(job_id),
                checkpoint=checkpoint_of(job, ref),
                links=links(job_id),
            )
        )

    # -- errors ---------------------------------------------------------------

    @app.exception_handler(CrucibleError)
    async def _crucible_error(request: Request, exc: CrucibleError) -> Any:  # pyright: ignore[reportUnusedFunction]
        return _problem_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Any:  # pyright: ignore[reportUnusedFunction]
        status, body = _http_problem(exc.status_code, str(exc.detail))
        return Response(_encoder.encode(body), status, media_type=PROBLEM_JSON)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Any:  # pyright: ignore[reportUnusedFunction]
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        from crucible_core.errors import ValidationError

        return _problem_response(
            ValidationError(f"{where}: {first.get('msg', 'invalid')}", path=f"$.{where}")
        )

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Any:  # pyright: ignore[reportUnusedFunction]
        return _error_response(exc)

    # -- health and metrics ---------------------------------------------------

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:  # pyright: ignore[reportUnusedFunction]
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses=_PROBLEM_RESPONSES)
    def readyz() -> Any:  # pyright: ignore[reportUnusedFunction]
        """The job database answers; 503 otherwise."""
        try:
            counts = scheduler.counts()
        except CrucibleError as exc:
            from crucible_core.errors import CapacityError

            raise CapacityError(f"the job database is not ready: {exc.message}") from None
        return {"status": "ready", "jobs": counts}

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def prometheus() -> Any:  # pyright: ignore[reportUnusedFunction]
        """Prometheus text exposition: request counts, jobs by status."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    # -- jobs -----------------------------------------------------------------

    @app.post(
        "/v1/jobs",
        tags=["jobs"],
        status_code=201,
        responses={**_ok("Submitted", 201), 200: {"description": "an earlier submission"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                **_json_content(
                    {
                        "oneOf": [
                            _schema_ref("Job"),
                            _schema_ref("TrainingJob"),
                            _schema_ref("Experiment"),
                        ]
                    }
                ),
            }
        },
    )
    async def submit_job(  # pyright: ignore[reportUnusedFunction]
        request: Request,
        p: Principal = write,
        idempotency_key: str | None = Header(default=None, max_length=IDEMPOTENCY_KEY_MAX),
    ) -> Any:
        """Enqueue a Job, a TrainingJob or an Experiment; answered once committed."""
        return await submit(await request.body(), p, idempotency_key)

    @app.get("/v1/jobs", tags=["jobs"], responses=_ok("JobPage"))
    def list_jobs(  # pyright: ignore[reportUnusedFunction]
        p: Principal = read,
        status: str | None = Query(default=None, max_length=40),
        kind: str | None = Query(default=None, max_length=40),
        limit: int = Query(default=100, ge=1, le=_MAX_PAGE),
        cursor: str | None = Query(default=None, max_length=200),
    ) -> Any:
        """The caller's jobs, oldest first, ``limit`` at a time (cursor pagination)."""
        jobs = scheduler.list(status=status, kind=kind, tenant_id=p.tenant_id)
        start = 0
        if cursor is not None:
            ids = [j.id for j in jobs]
            if cursor not in ids:
                raise ConfigError(
                    f"cursor {cursor!r} is not a position in this listing",
                    hint="pass the next_cursor of the previous page unchanged",
                )
            start = ids.index(cursor) + 1
        page = jobs[start : start + limit]
        more = start + limit < len(jobs)
        return _json(JobPage(items=page, next_cursor=page[-1].id if more and page else None))

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], responses=_ok("JobView"))
    async def get_job(job_id: str, p: Principal = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """Status, progress and latest metrics (from telemetry), last checkpoint, links."""
        return await job_view(job_id, p)

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"], responses=_ok("Job"))
    def cancel_job(job_id: str, p: Principal = write) -> Any:  # pyright: ignore[reportUnusedFunction]
        """Cancel at once if waiting, cooperatively if running; 409 if it already ended."""
        owned(job_id, p)
        return _json(scheduler.cancel(job_id))

    @app.post("/v1/jobs/{job_id}/retry", tags=["jobs"], responses=_ok("Job"))
    def retry_job(job_id: str, p: Principal = write) -> Any:  # pyright: ignore[reportUnusedFunction]
        """Requeue a failed, dead, cancelled or budget_exhausted job."""
        owned(job_id, p)
        return _json(scheduler.retry(job_id))

    @app.get(
        "/v1/jobs/{job_id}/events",
        tags=["jobs"],
        responses={
            200: {
                "description": "Server-Sent Events; each data is an Event",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_PROBLEM_RESPONSES,
        },
    )
    async def job_events(  # pyright: ignore[reportUnusedFunction]
        job_id: str,
        p: Principal = read,
        last_event_id: str | None = Header(default=None, max_length=20),
    ) -> Any:
        """The run's telemetry from after ``Last-Event-ID``, then live, until the job ends."""
        from crucible_server.sse import EventStream

        owned(job_id, p)  # one indexed read: on the loop, like GET /v1/jobs/{id}
        after = 0
        if last_event_id:
            if not last_event_id.isdigit():
                raise ConfigError(
                    f"Last-Event-ID {last_event_id!r} is not an event id",
                    hint="send the id of the last event received (a number)",
                )
            after = int(last_event_id)
        return EventStream(feeds.stream(job_id, after, sse=True))

    @app.websocket("/v1/jobs/{job_id}/ws")
    async def job_events_ws(  # pyright: ignore[reportUnusedFunction]
        websocket: WebSocket, job_id: str, last_event_id: int = Query(default=0, ge=0)
    ) -> None:
        """The events stream over a WebSocket: one JSON text message per event.

        Messages are ``{"id", "event", "data"}`` (the final ``end`` has no id),
        then a normal close (1000). A refused request gets one problem message
        and a close code of 4000 + its HTTP status (4401, 4403, 4404...).
        """
        await websocket.accept()
        try:
            p = authorize(websocket.headers.get("authorization"), "jobs:read", tokens, limiter)
            owned(job_id, p)
        except CrucibleError as exc:
            status, body = problem_body(exc)
            await websocket.send_text(_encoder.encode(body).decode())
            await websocket.close(code=4000 + status)
            return
        try:
            async for item in feeds.stream(job_id, last_event_id):
                message: dict[str, Any] = {"event": item["event"], "data": json.loads(item["data"])}
                if "id" in item:
                    message["id"] = int(item["id"])
                await websocket.send_text(json.dumps(message))
            await websocket.close(code=1000)
        except (WebSocketDisconnect, RuntimeError):
            return  # the client went away

    # -- artifacts ------------------------------------------------------------

    @app.get("/v1/jobs/{job_id}/artifacts", tags=["artifacts"], responses=_ok("ArtifactList"))
    def list_artifacts(job_id: str, p: Principal = art) -> Any:  # pyright: ignore[reportUnusedFunction]
        """Every file of the job's run directory (checkpoints, manifest, telemetry...).

        Dot files (the run's owner lock) are internal and not listed.
        """
        owned(job_id, p)
        root = run_dir(job_id)
        items: list[ArtifactEntry] = []
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
                if path.is_file() and not path.is_symlink() and not hidden:
                    rel = path.relative_to(root).as_posix()
                    items.append(
                        ArtifactEntry(
                            path=rel,
                            size=path.stat().st_size,
                            url=f"/v1/jobs/{job_id}/artifacts/{rel}",
                        )
                    )
        return _json(ArtifactList(items=items))

    @app.get(
        "/v1/jobs/{job_id}/artifacts/{path:path}",
        tags=["artifacts"],
        responses={
            200: {
                "description": "the file; Range requests give 206",
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            },
            **_PROBLEM_RESPONSES,
        },
    )
    def download_artifact(job_id: str, path: str, p: Principal = art) -> Any:  # pyright: ignore[reportUnusedFunction]
        """One file; ``X-Checksum-Sha256`` and ``Repr-Digest`` carry its sha256."""
        owned(job_id, p)
        root = run_dir(job_id).resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise NotFound(
                f"job {job_id!r} has no artifact {path!r}",
                hint=f"GET /v1/jobs/{job_id}/artifacts lists them",
            )
        digest = hashes.of(target)
        b64 = base64.b64encode(bytes.fromhex(digest)).decode()
        return FileResponse(
            target,
            headers={"X-Checksum-Sha256": digest, "Repr-Digest": f"sha-256=:{b64}:"},
        )

    # -- runs, plugins, backends, plan -----------------------------------------

    @app.get("/v1/runs/{run_id}/lineage", tags=["runs"], responses=_PROBLEM_RESPONSES)
    def run_lineage(run_id: str, p: Principal = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """Ancestors and descendants of a run (a job id)."""
        from crucible_core.records.lineage import LineageRecorder

        owned(run_id, p)
        with LineageRecorder(scheduler.path) as rec:
            try:
                up, down = rec.ancestors(run_id), rec.descendants(run_id)
            except NotFound:
                return {"ancestors": None, "descendants": None}
        return {"ancestors": up.to_dict(), "descendants": down.to_dict()}

    @app.get("/v1/plugins", tags=["meta"], responses=_PROBLEM_RESPONSES)
    def plugins(p: Principal = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """The installed plugins and their status."""
        from crucible_core.api import list_plugins

        return [info.describe() for info in list_plugins()]

    @app.get("/v1/backends", tags=["meta"], responses=_PROBLEM_RESPONSES)
    def backends(p: Principal = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """The registered training/sampling backends."""
        from crucible_core.api import list_registrations

        return [
            {"name": r.name, "summary": r.summary, "plugin": r.plugin}
            for r in list_registrations("backend")
        ]

    @app.post(
        "/v1/plan",
        tags=["jobs"],
        responses=_PROBLEM_RESPONSES,
        openapi_extra={
            "requestBody": {"required": True, **_json_content(_schema_ref("TrainingJob"))}
        },
    )
    async def plan(request: Request, p: Principal = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """The plan of a TrainingJob without running it (capabilities only, no data read)."""
        from crucible_core.ir import codec
        from crucible_core.train.plan import make_plan

        body = await request.body()

        def work() -> Any:
            tj = codec.decode(body, TrainingJob)
            from crucible_core.ir.paths import resolve_paths

            tj = resolve_paths(tj, cfg.base_dir)
            return codec.to_builtins(make_plan(tj, count_data=False, measure=False))

        return await run_in_threadpool(work)

    plugin_api = ApiContext(
        principal=lambda scope: requires(scope, tokens, limiter), in_thread=run_in_threadpool
    )
    mount_plugin_routes(app, plugin_api, host)
    app.state.crucible_components = plugin_api.components
    app.state.crucible_feeds = feeds  # closed by the runner when the server shuts down
    app.state.crucible_commits = commits

    from crucible_server.dashboard import mount_dashboard

    mount_dashboard(app, scheduler, tokens=tokens, limiter=limiter)
    app.add_middleware(_BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(_CountRequests, count=metrics.count)
    if cfg.fast_path:
        app.front = lambda stack: HotRoutes(
            stack,
            authorize=lambda header, scope: authorize(header, scope, tokens, limiter),
            get_job=job_view,
            submit=submit,
            error=_error_response,
            count=metrics.count,
            max_body_bytes=cfg.max_body_bytes,
        )
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


def _resume_point(path: str, st: object, previous: object) -> CheckpointRef | None:
    """The newest checkpoint named by a run's trainer_state.json at ``path`` (None if the
    run has none or the file does not decode)."""
    from crucible_core.train.state import read_loop_state

    try:
        state = read_loop_state(Path(path).parent)
    except CrucibleError:
        return None
    return state.checkpoints[-1].ref if state.checkpoints else None


def _http_problem(status: int, detail: str) -> tuple[int, dict[str, Any]]:
    code = "not_found" if status == 404 else "http_error"
    return status, {
        "type": f"https://crucible.dev/errors/{code}",
        "title": code.replace("_", " "),
        "status": status,
        "detail": detail,
        "code": code,
    }


class _App(FastAPI):
    """FastAPI with an optional ASGI app in front of its whole middleware stack.

    ``front(stack)`` wraps the built stack (error handling, middlewares, router):
    the fast path (:mod:`crucible_server.fastpath`) answers its routes there
    without passing through any of it.
    """

    front: Callable[[Any], Any] | None = None

    def build_middleware_stack(self) -> Any:
        stack = super().build_middleware_stack()
        return stack if self.front is None else self.front(stack)


class _CountRequests:
    """ASGI middleware: counts answered requests by method and status (streams included)."""

    def __init__(self, app: Any, count: Callable[[str, int], None]) -> None:
        self.app = app
        self.count = count

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]

        async def counting(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.count(method, message["status"])
            await send(message)

        await self.app(scope, receive, counting)


class _Metrics:
    """Prometheus counters of this app (own registry, so apps in one process do not clash)."""

    def __init__(self, scheduler: Scheduler) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "crucible_http_requests",
            "HTTP requests answered",
            ["method", "status"],
            registry=self.registry,
        )
        self.jobs = Gauge(
            "crucible_jobs", "Jobs in the queue by status", ["status"], registry=self.registry
        )
        self._scheduler = scheduler
        self._children: dict[tuple[str, int], Any] = {}  # labels() takes a lock: once each

    def count(self, method: str, status: int) -> None:
        """One more answered request."""
        child = self._children.get((method, status))
        if child is None:
            child = self._children[method, status] = self.requests.labels(method, str(status))
        child.inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        for status, n in self._scheduler.counts().items():
            self.jobs.labels(status).set(n)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _clean(node: Any) -> Any:
    """Docstring descriptions normalised (msgspec releases differ), and tuples' ``items: false``
    written as the equivalent ``maxItems``, an array's absent ``items`` as ``{}``: the same
    schemas, in the form off-the-shelf client generators accept."""
    if isinstance(node, dict):
        out: dict[str, Any] = {
            k: (inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _clean(v))
            for k, v in node.items()  # pyright: ignore[reportUnknownVariableType]
        }
        if out.get("items") is False and isinstance(out.get("prefixItems"), list):
            del out["items"]
            out["maxItems"] = len(out["prefixItems"])
        elif out.get("type") == "array" and "items" not in out and "prefixItems" not in out:
            out["items"] = {}  # any item: what an absent `items` means
        return out
    if isinstance(node, list):
        return [_clean(v) for v in node]  # pyright: ignore[reportUnknownVariableType]
    return node


def openapi_document(app: Any) -> dict[str, Any]:
    """The OpenAPI 3.1 document: FastAPI's routes plus the IR's msgspec schemas as components."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version="3.1.0",
        description=app.description,
        routes=app.routes,
    )
    extra: list[type] = list(getattr(app.state, "crucible_components", []))
    _, components = msgspec.json.schema_components(
        [Job, TrainingJob, Experiment, Event, Submitted, JobView, JobPage, ArtifactList, *extra],
        ref_template="#/components/schemas/{name}",
    )
    comp = doc.setdefault("components", {})
    schemas = comp.setdefault("schemas", {})
    schemas.update(_clean(components))
    schemas["Problem"] = PROBLEM_SCHEMA
    comp["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    doc["security"] = [{"bearer": []}]
    for probe in ("/healthz", "/readyz", "/metrics"):
        for operation in doc["paths"].get(probe, {}).values():
            operation["security"] = []  # probes and scrapes need no token
    app.openapi_schema = doc
    return doc

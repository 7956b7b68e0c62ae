"""The HTTP surface: every ``/api/v1`` endpoint the tinker SDK calls, on Starlette.

Auth: every ``/api/v1`` request except ``healthz`` needs an ``X-API-Key`` the
server accepts (401 otherwise, which the SDK does not retry).

Deduplication: a POST carrying an ``X-Idempotency-Key`` already answered gets
the same answer again (the SDK's HTTP layer reuses the key across its own
retries); a request with the same key still in flight waits for that one's
answer. Training operations are also deduplicated by ``(model_id, seq_id)``
and samples by ``(sampling_session_id, seq_id)`` in the engine, which covers
the SDK's outer retry loop (a new key for the same operation).

Malformed requests: bodies are decoded in :mod:`~crucible_tinker.server.wire`
(msgspec request Structs); this module alone turns errors into HTTP answers,
always JSON ``{"detail": ...}``: a body that does not decode is 400, a body
bigger than ``ServerConfig.body_limit`` is 413 (refused from its
``Content-Length`` before it is read, or as soon as a chunked body passes the
limit; the connection is then closed), a GET with a body is 400.

Statuses: the engine knows no HTTP; it raises crucible's typed errors and
:data:`STATUS_OF` here maps them (a refused request 400, an unknown id 404,
an ended one 410, a state clash 409). Any other crucible error is a 500
naming it; anything unexpected is a JSON 500 with the traceback in the
server's log only. The statuses are the tinker protocol's (the SDK retries
409 and 5xx, stops on 410), which is why this table, not crucible's
``ERROR_TABLE``, decides them.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from crucible_core.errors import ConfigError, Conflict, CrucibleError, NotFound
from crucible_tinker.server.config import ServerConfig
from crucible_tinker.server.downloads import FILES_PREFIX
from crucible_tinker.server.engine import Engine
from crucible_tinker.server.errors import Gone
from crucible_tinker.server.futures import Failure
from crucible_tinker.server.idempotency import Idempotency
from crucible_tinker.server.payloads import (
    decode_forward_backward,
)
from crucible_tinker.server.wire import (
    BodyTooLarge,
    CreateModelRequest,
    CreateSamplingSessionRequest,
    EmptyRequest,
    LoadWeightsRequest,
    ModelRequest,
    OptimStepRequest,
    RequestIdRequest,
    SampleRequest,
    SaveWeightsExternalRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    SessionRequest,
    WireRequest,
    decode_request,
)

__all__ = ["ROUTES", "STATUS_OF", "RouteSpec", "build_app", "status_of"]

log = logging.getLogger("crucible_tinker.server")
Handler = Callable[[Request], Awaitable[Response]]
W = TypeVar("W", bound=WireRequest)

#: The HTTP status of each typed error, most specific first: the one place they are decided.
STATUS_OF: tuple[tuple[type[CrucibleError], int], ...] = (
    (BodyTooLarge, 413),
    (Gone, 410),
    (NotFound, 404),
    (Conflict, 409),
    (ConfigError, 400),
)


def status_of(exc: CrucibleError) -> int:
    """The HTTP status answering ``exc`` (500 for a crucible error not in :data:`STATUS_OF`)."""
    return next((status for cls, status in STATUS_OF if isinstance(exc, cls)), 500)


class RouteSpec(NamedTuple):
    """One endpoint: ``method path``, served by the handler named ``handler``; ``auth``: an
    accepted X-API-Key is required; ``idempotent``: a POST's X-Idempotency-Key is honoured."""

    method: str
    path: str
    handler: str
    auth: bool = True
    idempotent: bool = True


def _v1(method: str, path: str, handler: str, **kw: bool) -> RouteSpec:
    return RouteSpec(method, f"/api/v1/{path}", handler, **kw)


#: The route table of the server (tests walk it: every endpoint answers a malformed
#: request with a 4xx).
ROUTES: tuple[RouteSpec, ...] = (
    _v1("POST", "client/config", "client_config", idempotent=False),
    _v1("POST", "client/dynamic_config", "dynamic_config", idempotent=False),
    _v1("GET", "healthz", "healthz", auth=False),
    _v1("GET", "get_server_capabilities", "capabilities"),
    _v1("POST", "create_session", "create_session"),
    _v1("POST", "session_heartbeat", "heartbeat", idempotent=False),
    _v1("POST", "telemetry", "telemetry", idempotent=False),
    _v1("POST", "sessions/{session_id}/finish", "finish"),
    _v1("POST", "create_model", "create_model"),
    _v1("POST", "get_info", "get_info", idempotent=False),
    _v1("POST", "forward_backward", "forward_backward"),
    _v1("POST", "optim_step", "optim_step"),
    _v1("POST", "save_weights", "save_weights"),
    _v1("POST", "save_weights_for_sampler", "save_weights_for_sampler"),
    _v1("POST", "save_weights_external", "save_weights_external"),
    _v1(
        "GET",
        "training_runs/{run_id}/checkpoints/{checkpoint_id:path}/external_weights_urls",
        "external_weights_urls",
    ),
    _v1("POST", "load_weights", "load_weights"),
    _v1("POST", "create_sampling_session", "create_sampling_session"),
    _v1("GET", "samplers/{sampler_id:path}", "get_sampler"),
    _v1("POST", "asample", "asample"),
    _v1("POST", "retrieve_future", "retrieve_future", idempotent=False),
    _v1("POST", "cancel_future", "cancel_future", idempotent=False),
    # Signed download URLs (external_weights_urls): the token in the path is the credential.
    RouteSpec("GET", FILES_PREFIX + "/{token}/{name:path}", "download", auth=False),
    RouteSpec("GET", "/crucible/v1/stats", "stats", idempotent=False),
    RouteSpec("GET", "/crucible/v1/info", "info", idempotent=False),
)


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"the request body is larger than {limit} bytes, the limit of this server "
        "(crucible serve-tinker --max-body-bytes)"
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) before it is read when ``Content-Length`` says it is over
    ``limit``, and as soon as a chunked body passes it while being read."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ConfigError(f"bad Content-Length {declared[:40]!r}") from None
        if size > limit:
            raise _too_large(limit)
    parts: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def _decoded(raw: bytes, type_: type[W]) -> W:
    """``raw`` as ``type_``; ValidationError (400) naming the field when it is not one."""
    return decode_request(raw, type_)


def build_app(engine: Engine, config: ServerConfig) -> Starlette:
    """The Starlette application of one server."""
    keys = tuple(k.encode() for k in config.api_keys)
    idempotency = Idempotency()
    limit = config.body_limit(engine.context_length)

    def authorized(request: Request) -> bool:
        given = request.headers.get("x-api-key", "").encode()
        return any(hmac.compare_digest(given, k) for k in keys)

    async def body(request: Request) -> bytes:
        return await _read_body(request, limit)

    def endpoint(fn: Handler, *, auth: bool = True, idempotent: bool = True) -> Handler:
        async def wrapped(request: Request) -> Response:
            if auth and not authorized(request):
                # Closing the connection: a client that fails to authenticate while it is
                # being built drops its connection pool without closing it.
                response = _error(401, "missing or invalid X-API-Key")
                response.headers["connection"] = "close"
                return response
            key = request.headers.get("x-idempotency-key")

            async def produce() -> Response:
                try:
                    return await fn(request)
                except CrucibleError as exc:
                    status = status_of(exc)
                    if status >= 500:
                        log.warning("%s %s failed: %s", request.method, request.url.path, exc)
                    response = _error(status, str(exc))
                    if status == 413:
                        # The rest of the body is never read: this connection cannot be reused.
                        response.headers["connection"] = "close"
                    return response
                except Exception:
                    # A bug, not a bad request: the traceback goes to the log, not the client.
                    log.exception("%s %s failed", request.method, request.url.path)
                    return _error(500, "internal error (see the server's log)")

            if idempotent and key and request.method == "POST":
                return await idempotency.run((request.url.path, key), produce)
            return await produce()

        return wrapped

    def json_call(
        method: Callable[[W], dict[str, Any]], type_: type[W], *, thread: bool = False
    ) -> Handler:
        async def handler(request: Request) -> Response:
            req = _decoded(await body(request), type_)
            result = await run_in_threadpool(method, req) if thread else method(req)
            return JSONResponse(result)

        return handler

    def bodiless(fn: Handler) -> Handler:
        """A GET handler: a request with a body is malformed (400)."""

        async def handler(request: Request) -> Response:
            if await body(request):
                raise ConfigError(f"GET {request.url.path} takes no body")
            return await fn(request)

        return handler

    async def client_config(request: Request) -> Response:
        _decoded(await body(request), EmptyRequest)
        # `Connection: close`: the SDK fetches this through a one-off client it never
        # closes; closing from our side keeps its socket from leaking (ResourceWarning).
        return JSONResponse(
            {
                "pjwt_auth_enabled": False,
                "credential_default_source": "api_key",
                "use_pyqwest_transport": config.use_pyqwest_transport,
                "parallel_fwdbwd_chunks": config.parallel_fwdbwd_chunks,
                "proto_compress_fwdbwd": config.proto_compress_fwdbwd,
                "fwdbwd_max_chunk_len": config.fwdbwd_max_chunk_len,
                "fwdbwd_max_chunk_bytes_count": config.fwdbwd_max_chunk_bytes,
                "sample_use_retrieve_futures": False,
                "custom_loss_server_side": False,
                "sample_join_sampling_session": False,
            },
            headers={"connection": "close"},
        )

    async def dynamic_config(request: Request) -> Response:
        _decoded(await body(request), EmptyRequest)
        return JSONResponse({"refresh_interval_sec": 300, "sample_cancel_enabled": False})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def capabilities(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(engine.capabilities))

    async def heartbeat(request: Request) -> Response:
        req = _decoded(await body(request), SessionRequest)
        return JSONResponse(engine.heartbeat(req.session_id))

    async def telemetry(request: Request) -> Response:
        # Accepted and dropped (events may quote request headers), once it decodes.
        _decoded(await body(request), EmptyRequest)
        engine.stats["telemetry_batches"] += 1
        # `Connection: close`: the SDK's final flush runs while its client is being closed
        # and may open a connection pool that nothing closes afterwards.
        return JSONResponse({"status": "accepted"}, headers={"connection": "close"})

    async def finish(request: Request) -> Response:
        _decoded(await body(request), EmptyRequest)
        sid = request.path_params["session_id"]
        return JSONResponse(await run_in_threadpool(engine.finish_session, sid))

    async def forward_backward(request: Request) -> Response:
        raw = await body(request)
        encoding = request.headers.get("content-encoding")
        if encoding:
            engine.stats[f"bodies:{encoding.strip().lower()}"] = (
                engine.stats.get(f"bodies:{encoding.strip().lower()}", 0) + 1
            )
        # BodyTooLarge (413) past the limit once decompressed; ValidationError or
        # UnsupportedError (400) for a body that is not a request this server runs.
        req = decode_forward_backward(raw, encoding, max_bytes=limit)
        return JSONResponse(engine.forward_backward(req))

    async def get_sampler(request: Request) -> Response:
        return JSONResponse(engine.get_sampler(request.path_params["sampler_id"]))

    async def cancel_future(request: Request) -> Response:
        _decoded(await body(request), RequestIdRequest)
        return JSONResponse({})

    async def retrieve_future(request: Request) -> Response:
        rid = _decoded(await body(request), RequestIdRequest).request_id
        entry = engine.futures.get(rid)
        if entry is None:
            # 410: the promise is gone (expired or from before a restart); the SDK
            # resubmits a sample and reports a training call as failed.
            raise Gone(f"unknown or expired request {rid!r}")
        if not await entry.wait(config.long_poll_s):
            return JSONResponse({"type": "try_again", "request_id": rid, "queue_state": "active"})
        outcome = entry.outcome()
        if isinstance(outcome, Failure):
            return JSONResponse({"error": outcome.message, "category": outcome.category})
        return Response(outcome.body, media_type=outcome.media_type)

    async def external_weights_urls(request: Request) -> Response:
        params = request.path_params
        base = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(
            engine.external_weights_urls(params["run_id"], params["checkpoint_id"], base)
        )

    async def download(request: Request) -> Response:
        from starlette.responses import FileResponse

        path = engine.downloads.open(request.path_params["token"], request.path_params["name"])
        return FileResponse(path, media_type="application/octet-stream")

    async def info(request: Request) -> Response:
        # Lets a crucible client borrow the tokenizer of the same backend locally.
        return JSONResponse(
            {"server": "crucible-tinker", "backend": engine.backend_name, "api": "tinker"}
        )

    async def stats(request: Request) -> Response:
        snap = engine.snapshot()
        snap["stats"]["idempotency_hits"] = idempotency.hits
        return JSONResponse(snap)

    handlers: dict[str, Handler] = {
        "client_config": client_config,
        "dynamic_config": dynamic_config,
        "healthz": healthz,
        "capabilities": capabilities,
        "create_session": json_call(engine.create_session, EmptyRequest),
        "heartbeat": heartbeat,
        "telemetry": telemetry,
        "finish": finish,
        "create_model": json_call(engine.create_model, CreateModelRequest),
        "get_info": json_call(engine.get_info, ModelRequest, thread=True),
        "forward_backward": forward_backward,
        "optim_step": json_call(engine.optim_step, OptimStepRequest),
        "save_weights": json_call(engine.save_weights, SaveWeightsRequest),
        "save_weights_for_sampler": json_call(
            engine.save_weights_for_sampler, SaveWeightsForSamplerRequest
        ),
        "save_weights_external": json_call(
            engine.save_weights_external, SaveWeightsExternalRequest
        ),
        "external_weights_urls": external_weights_urls,
        "download": download,
        "load_weights": json_call(engine.load_weights, LoadWeightsRequest),
        "create_sampling_session": json_call(
            engine.create_sampling_session, CreateSamplingSessionRequest, thread=True
        ),
        "get_sampler": get_sampler,
        "asample": json_call(engine.asample, SampleRequest),
        "retrieve_future": retrieve_future,
        "cancel_future": cancel_future,
        "stats": stats,
        "info": info,
    }
    assert set(handlers) == {spec.handler for spec in ROUTES}, "ROUTES and handlers disagree"
    routes = [
        Route(
            spec.path,
            endpoint(
                bodiless(handlers[spec.handler])
                if spec.method == "GET"
                else handlers[spec.handler],
                auth=spec.auth,
                idempotent=spec.idempotent,
            ),
            methods=[spec.method],
        )
        for spec in ROUTES
    ]
    return Starlette(routes=routes)

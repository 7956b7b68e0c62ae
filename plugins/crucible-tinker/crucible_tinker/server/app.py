"""The HTTP surface: every ``/api/v1`` endpoint the tinker SDK calls, on Starlette.

Auth: every ``/api/v1`` request except ``healthz`` needs an ``X-API-Key`` the
server accepts (401 otherwise, which the SDK does not retry).

Deduplication: a POST carrying an ``X-Idempotency-Key`` already answered gets
the same answer again (the SDK's HTTP layer reuses the key across its own
retries); a request with the same key still in flight waits for that one's
answer. Training operations are also deduplicated by ``(model_id, seq_id)``
and samples by ``(sampling_session_id, seq_id)`` in the engine, which covers
the SDK's outer retry loop (a new key for the same operation).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from crucible_core.errors import ConfigError, CrucibleError, NotFound
from crucible_tinker.server.config import ServerConfig
from crucible_tinker.server.engine import ApiError, Engine
from crucible_tinker.server.futures import JSON, Failure
from crucible_tinker.server.wire import decode_forward_backward

__all__ = ["build_app"]

log = logging.getLogger("crucible_tinker.server")
Handler = Callable[[Request], Awaitable[Response]]
_IDEMPOTENCY_CACHE = 20_000


class _Idempotency:
    """Answers already given, by (path, X-Idempotency-Key)."""

    def __init__(self) -> None:
        self._done: OrderedDict[tuple[str, str], tuple[int, bytes]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[tuple[int, bytes]]] = {}
        self.hits = 0

    async def run(
        self, key: tuple[str, str], produce: Callable[[], Awaitable[Response]]
    ) -> Response:
        cached = self._done.get(key)
        if cached is not None:
            self.hits += 1
            return Response(cached[1], status_code=cached[0], media_type=JSON)
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            status, body = await asyncio.shield(pending)
            return Response(body, status_code=status, media_type=JSON)
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            response = await produce()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            self._inflight.pop(key, None)
        body = bytes(response.body)
        if 200 <= response.status_code < 300 and response.media_type == JSON:
            self._done[key] = (response.status_code, body)
            while len(self._done) > _IDEMPOTENCY_CACHE:
                self._done.popitem(last=False)
        if not fut.done():
            fut.set_result((response.status_code, body))
        return response


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def build_app(engine: Engine, config: ServerConfig) -> Starlette:
    """The Starlette application of one server."""
    keys = tuple(k.encode() for k in config.api_keys)
    idempotency = _Idempotency()

    def authorized(request: Request) -> bool:
        given = request.headers.get("x-api-key", "").encode()
        return any(hmac.compare_digest(given, k) for k in keys)

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
                except ApiError as exc:
                    return _error(exc.status, exc.detail)
                except (ConfigError, NotFound) as exc:
                    # A request the backend refused: the SDK must not retry it.
                    return _error(404 if isinstance(exc, NotFound) else 400, str(exc))
                except CrucibleError as exc:
                    log.warning("%s %s failed: %s", request.method, request.url.path, exc)
                    return _error(500, str(exc))

            if idempotent and key and request.method == "POST":
                return await idempotency.run((request.url.path, key), produce)
            return await produce()

        return wrapped

    def json_call(
        method: Callable[[dict[str, Any]], dict[str, Any]], *, thread: bool = False
    ) -> Handler:
        async def handler(request: Request) -> Response:
            body = await _json_body(request)
            result = await run_in_threadpool(method, body) if thread else method(body)
            return JSONResponse(result)

        return handler

    async def client_config(request: Request) -> Response:
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
                "sample_use_retrieve_futures": False,
                "custom_loss_server_side": False,
                "sample_join_sampling_session": False,
            },
            headers={"connection": "close"},
        )

    async def dynamic_config(request: Request) -> Response:
        return JSONResponse({"refresh_interval_sec": 300, "sample_cancel_enabled": False})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def capabilities(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(engine.capabilities))

    async def heartbeat(request: Request) -> Response:
        body = await _json_body(request)
        sid = body.get("session_id")
        if not isinstance(sid, str):
            raise ApiError(400, "`session_id` is required")
        return JSONResponse(engine.heartbeat(sid))

    async def telemetry(request: Request) -> Response:
        await request.body()  # accepted and dropped: events may quote request headers
        engine.stats["telemetry_batches"] += 1
        # `Connection: close`: the SDK's final flush runs while its client is being closed
        # and may open a connection pool that nothing closes afterwards.
        return JSONResponse({"status": "accepted"}, headers={"connection": "close"})

    async def finish(request: Request) -> Response:
        sid = request.path_params["session_id"]
        return JSONResponse(await run_in_threadpool(engine.finish_session, sid))

    async def forward_backward(request: Request) -> Response:
        raw = await request.body()
        encoding = request.headers.get("content-encoding")
        if encoding:
            engine.stats[f"bodies:{encoding.strip().lower()}"] = (
                engine.stats.get(f"bodies:{encoding.strip().lower()}", 0) + 1
            )
        try:
            req = decode_forward_backward(raw, encoding)
        except Exception as exc:  # ValidationError / UnsupportedError: a bad request
            raise ApiError(400, str(exc)) from None
        return JSONResponse(engine.forward_backward(req))

    async def get_sampler(request: Request) -> Response:
        return JSONResponse(engine.get_sampler(request.path_params["sampler_id"]))

    async def cancel_future(request: Request) -> Response:
        await request.body()
        return JSONResponse({})

    async def retrieve_future(request: Request) -> Response:
        body = await _json_body(request)
        rid = body.get("request_id")
        if not isinstance(rid, str):
            raise ApiError(400, "`request_id` is required")
        entry = engine.futures.get(rid)
        if entry is None:
            # 410: the promise is gone (expired or from before a restart); the SDK
            # resubmits a sample and reports a training call as failed.
            raise ApiError(410, f"unknown or expired request {rid!r}")
        if not await entry.wait(config.long_poll_s):
            return JSONResponse({"type": "try_again", "request_id": rid, "queue_state": "active"})
        outcome = entry.outcome()
        if isinstance(outcome, Failure):
            return JSONResponse({"error": outcome.message, "category": outcome.category})
        return Response(outcome.body, media_type=outcome.media_type)

    async def info(request: Request) -> Response:
        # Lets a crucible client borrow the tokenizer of the same backend locally.
        return JSONResponse(
            {"server": "crucible-tinker", "backend": engine.backend_name, "api": "tinker"}
        )

    async def stats(request: Request) -> Response:
        snap = engine.snapshot()
        snap["stats"]["idempotency_hits"] = idempotency.hits
        return JSONResponse(snap)

    def post(path: str, handler: Handler, **kw: Any) -> Route:
        return Route(f"/api/v1/{path}", endpoint(handler, **kw), methods=["POST"])

    def get(path: str, handler: Handler, **kw: Any) -> Route:
        return Route(f"/api/v1/{path}", endpoint(handler, **kw), methods=["GET"])

    routes = [
        post("client/config", client_config, idempotent=False),
        post("client/dynamic_config", dynamic_config, idempotent=False),
        get("healthz", healthz, auth=False),
        get("get_server_capabilities", capabilities),
        post("create_session", json_call(engine.create_session)),
        post("session_heartbeat", heartbeat, idempotent=False),
        post("telemetry", telemetry, idempotent=False),
        post("sessions/{session_id}/finish", finish),
        post("create_model", json_call(engine.create_model)),
        post("get_info", json_call(engine.get_info, thread=True), idempotent=False),
        post("forward_backward", forward_backward),
        post("optim_step", json_call(engine.optim_step)),
        post("save_weights", json_call(engine.save_weights)),
        post("save_weights_for_sampler", json_call(engine.save_weights_for_sampler)),
        post("load_weights", json_call(engine.load_weights)),
        post("create_sampling_session", json_call(engine.create_sampling_session, thread=True)),
        get("samplers/{sampler_id:path}", get_sampler),
        post("asample", json_call(engine.asample)),
        post("retrieve_future", retrieve_future, idempotent=False),
        post("cancel_future", cancel_future, idempotent=False),
        Route("/crucible/v1/stats", endpoint(stats, idempotent=False), methods=["GET"]),
        Route("/crucible/v1/info", endpoint(info, idempotent=False), methods=["GET"]),
    ]
    return Starlette(routes=routes)

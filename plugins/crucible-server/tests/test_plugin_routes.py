"""Routes from plugins (core's ``register_api_routes`` hook) on a real server on 127.0.0.1:
mounted only when a plugin registers them, behind the server's tokens and scopes, with
problem+json errors and their schemas in /openapi.json."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from crucible_server.runner import ApiServer
from crucible_server.tokens import TokenStore

from crucible_core import RegisterApiRoute
from crucible_core.errors import NotFound, PluginError
from crucible_core.plugins import PluginHost
from crucible_core.queue.scheduler import Scheduler


class Greeting(msgspec.Struct, frozen=True, kw_only=True):
    """What the test plugin's route returns."""

    text: str
    tenant: str


def _router(api: Any) -> Any:
    from fastapi import APIRouter
    from fastapi.responses import Response

    r = APIRouter(prefix="/v1/hello")
    admin = api.require("admin")
    ok = {200: {"description": "OK", "content": {"application/json": {
        "schema": api.schema(Greeting)}}}}  # fmt: skip

    @r.get("/{who}", responses=ok, response_model=None)
    async def hello(who: str, p: Any = admin) -> Any:  # pyright: ignore[reportUnusedFunction]
        if who == "nobody":
            raise NotFound("no such person", hint="greet somebody")
        data = await api.in_thread(lambda: Greeting(text=f"hello {who}", tenant=p.tenant_id))
        return Response(msgspec.json.encode(data), media_type="application/json")

    return r


class _Plugin:
    @staticmethod
    def register_api_routes(register: RegisterApiRoute) -> None:
        register("hello", _router, summary="test routes", prefix="/v1/hello")


def _host(*plugins: tuple[str, Any]) -> PluginHost:
    from crucible_core import hookimpl

    h = PluginHost(autoload=False)
    for name, plugin in plugins:
        h.add_plugin(
            type("P", (), {"register_api_routes": staticmethod(hookimpl(plugin))})(), name=name
        )
    return h


def _serve(host: PluginHost, tokens: TokenStore | None = None) -> ApiServer:
    return ApiServer(Scheduler(), tokens=tokens, host_plugins=host, workers=0).start(timeout=30)


def test_plugin_routes_are_mounted_behind_tokens_and_scopes(tokens: TokenStore, http) -> None:
    admin, _ = tokens.create("acme", ["admin"])
    reader, _ = tokens.create("acme", ["jobs:read"])
    srv = _serve(_host(("hello", _Plugin.register_api_routes)), tokens)
    try:
        got = http(srv, admin).get("/v1/hello/ada")
        assert got.status_code == 200, got.text
        assert got.json() == {"text": "hello ada", "tenant": "acme"}
        assert http(srv, reader).get("/v1/hello/ada").status_code == 403  # scope checked
        assert http(srv).get("/v1/hello/ada").status_code == 401  # no token
        missing = http(srv, admin).get("/v1/hello/nobody")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
        assert missing.json()["code"] == "not_found"
        doc = http(srv, admin).get("/openapi.json").json()
        assert "/v1/hello/{who}" in doc["paths"]
        assert doc["components"]["schemas"]["Greeting"]["required"] == ["text", "tenant"]
    finally:
        srv.stop()
        srv.scheduler.close()


def test_without_a_plugin_registering_them_there_are_no_such_routes(http) -> None:
    srv = _serve(_host())
    try:
        assert http(srv).get("/v1/hello/ada").status_code == 404
        assert "/v1/hello/{who}" not in http(srv).get("/openapi.json").json()["paths"]
    finally:
        srv.stop()
        srv.scheduler.close()


def test_a_broken_route_factory_is_a_plugin_error_in_strict_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crucible_server.app import build_app

    def broken(register: RegisterApiRoute) -> None:
        register("bad", lambda api: 1 / 0)

    monkeypatch.setenv("CRUCIBLE_STRICT_PLUGINS", "1")
    with Scheduler() as sched, pytest.raises(PluginError, match="api routes 'bad'"):
        build_app(sched, host=_host(("bad", broken)))
    monkeypatch.setenv("CRUCIBLE_STRICT_PLUGINS", "0")
    with Scheduler() as sched:
        app = build_app(sched, host=_host(("bad", broken)))
        assert all("/v1/hello" not in getattr(r, "path", "") for r in app.routes)

"""``/v1/models/...``: the registry over crucible-server's HTTP API.

Mounted by crucible-server through core's ``register_api_routes`` hook
(:func:`router` is the factory; see ``crucible_registry.plugin``), so the
server has these endpoints exactly when crucible-registry is installed.
FastAPI is imported only when the server builds its app.

The registry is one per server (``$CRUCIBLE_HOME/registry.db``), not per
tenant: reading needs the ``jobs:read`` scope, moving an alias (gated) or
rolling it back needs ``admin``. Errors are the server's problem+json: an
unknown name or version 404 (with the closest names), a failing gate or a
stale ``expected`` 409 (a gate failure carries every rule's verdict in
``gates``), a bad body 422.

| method | path | |
|---|---|---|
| GET | ``/v1/models`` | every name |
| GET | ``/v1/models/{name}`` | one name: versions, aliases, tags |
| GET | ``/v1/models/{name}/versions`` | its versions |
| GET | ``/v1/models/{name}/versions/{version}`` | one version |
| GET | ``/v1/models/{name}/aliases/{alias}`` | the version the alias holds |
| GET | ``/v1/models/{name}/history`` | the alias moves, with their evidence |
| GET | ``/v1/models/{name}/aliases/{alias}/check?version=N`` | the gates' verdicts now |
| POST | ``/v1/models/{name}/aliases/{alias}`` | move it (``AliasMove`` body) |
| POST | ``/v1/models/{name}/aliases/{alias}/rollback`` | give it back to its previous holder |
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' parameter types
# (``Request``, imported inside :func:`router`) at definition time.
from typing import Any

import msgspec

from crucible_registry.gates import RuleResult
from crucible_registry.registry import UNSET, AliasEvent, Model, Registry, Version

__all__ = ["AliasMove", "Rollback", "router"]


class AliasMove(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Move an alias to ``version``. ``expected``: the version you saw it hold (0: none);
    a move since is a 409. ``force`` (with a ``reason``) overrides failing gates."""

    version: int
    reason: str = ""
    force: bool = False
    expected: int | None = None


class Rollback(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Give an alias back to the holder before its newest move."""

    reason: str = ""


def _json(obj: Any) -> Any:
    from fastapi.responses import Response

    return Response(msgspec.json.encode(obj), media_type="application/json")


def _body(raw: bytes, kind: type[Any]) -> Any:
    from crucible_core.errors import ValidationError

    try:
        return msgspec.json.decode(raw or b"{}", type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationError(f"request body: {exc}") from None


def router(api: Any) -> Any:
    """The ``APIRouter`` of the registry endpoints (module docstring)."""
    from fastapi import APIRouter, Query, Request

    r = APIRouter(prefix="/v1/models", tags=["models"])
    read = api.require("jobs:read")
    admin = api.require("admin")
    problems = {
        "4XX": {"description": "problem", "content": {"application/problem+json": {
            "schema": {"$ref": "#/components/schemas/Problem"}}}},
    }  # fmt: skip

    def ok(schema: dict[str, Any]) -> dict[int | str, Any]:
        return {200: {"description": "OK", "content": {"application/json": {"schema": schema}}},
                **problems}  # fmt: skip

    def many(struct: type) -> dict[str, Any]:
        return {"type": "array", "items": api.schema(struct)}

    def body(struct: type) -> dict[str, Any]:
        content = {"application/json": {"schema": api.schema(struct)}}
        return {"requestBody": {"required": True, "content": content}}

    async def run(fn: Any, *args: Any) -> Any:
        def work() -> Any:
            with Registry() as reg:
                return fn(reg, *args)

        return _json(await api.in_thread(work))

    @r.get("", responses=ok(many(Model)), response_model=None)
    async def list_models(p: Any = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """Every registered name."""
        return await run(lambda reg: reg.models())

    @r.get("/{name}", responses=ok(api.schema(Model)), response_model=None)
    async def show_model(name: str, p: Any = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """One name: its versions, aliases and tags."""
        return await run(lambda reg: reg.model(name))

    @r.get("/{name}/versions", responses=ok(many(Version)), response_model=None)
    async def list_versions(name: str, p: Any = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """The versions of a name."""
        return await run(lambda reg: reg.versions(name))

    @r.get("/{name}/versions/{version}", responses=ok(api.schema(Version)), response_model=None)
    async def show_version(name: str, version: int, p: Any = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """One version (404 with the closest names if unknown)."""
        return await run(lambda reg: reg.resolve(f"{name}/{version}"))

    @r.get("/{name}/history", responses=ok(many(AliasEvent)), response_model=None)
    async def history(name: str, p: Any = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """Every alias move of a name (append-only), with the gate evidence of each."""
        return await run(lambda reg: reg.history(name))

    @r.get("/{name}/aliases/{alias}", responses=ok(api.schema(Version)), response_model=None)
    async def resolve_alias(name: str, alias: str, p: Any = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """The version ``name@alias`` holds."""
        return await run(lambda reg: reg.resolve(f"{name}@{alias}"))

    @r.get("/{name}/aliases/{alias}/check", responses=ok(many(RuleResult)), response_model=None)
    async def check_gates(  # pyright: ignore[reportUnusedFunction]
        name: str, alias: str, version: int = Query(ge=1), p: Any = read
    ) -> Any:
        """What the gates of ``name@alias`` say of moving it to ``version`` now."""
        return await run(lambda reg: reg.check_gates(name, alias, version))

    @r.post("/{name}/aliases/{alias}", responses=ok(api.schema(AliasEvent)),
            openapi_extra=body(AliasMove), response_model=None)  # fmt: skip
    async def move_alias(name: str, alias: str, request: Request, p: Any = admin) -> Any:  # pyright: ignore[reportUnusedFunction]
        """Move an alias (gated; 409 with every rule's verdict when a gate fails)."""
        move: AliasMove = _body(await request.body(), AliasMove)
        expected: Any = UNSET if move.expected is None else (move.expected or None)
        return await run(lambda reg: reg.set_alias(
            name, alias, move.version, reason=move.reason, force=move.force,
            expected=expected, actor=f"api:{p.tenant_id}/{p.token_id}"))  # fmt: skip

    @r.post("/{name}/aliases/{alias}/rollback", responses=ok(api.schema(AliasEvent)),
            openapi_extra=body(Rollback), response_model=None)  # fmt: skip
    async def rollback(name: str, alias: str, request: Request, p: Any = admin) -> Any:  # pyright: ignore[reportUnusedFunction]
        """Give the alias back to the holder before its newest move."""
        rb: Rollback = _body(await request.body(), Rollback)
        return await run(lambda reg: reg.rollback(
            name, alias, reason=rb.reason, actor=f"api:{p.tenant_id}/{p.token_id}"))  # fmt: skip

    return r

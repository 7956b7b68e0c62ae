"""Routes other plugins add to the API, through core's ``register_api_routes`` hook.

The server knows no plugin's endpoints: :func:`mount_plugin_routes` asks the
plugin host for every ``api_route`` registration, calls its factory with an
:class:`ApiContext` and mounts the ``APIRouter`` it returns. crucible-registry
adds ``/v1/models/...`` this way (only when it is installed). The context
gives a plugin what the server's own routes use: authentication with scopes
and tenants (:meth:`ApiContext.require`), a thread for blocking work, and
msgspec Structs as OpenAPI components (:meth:`ApiContext.schema`), so the
document stays one generated from msgspec schemas.

A plugin whose factory fails is a plugin error: in strict mode
(``CRUCIBLE_STRICT_PLUGINS=1``) building the app raises; otherwise its routes
are left out and the failure is logged, like any broken plugin.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crucible_core.errors import PluginError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from crucible_core.plugins import PluginHost

__all__ = ["ApiContext", "mount_plugin_routes"]

_log = logging.getLogger(__name__)


@dataclass
class ApiContext:
    """What a route factory gets (see ``register_api_routes`` in docs/hooks.md)."""

    principal: Callable[[str], Callable[..., Any]]
    in_thread: Callable[..., Awaitable[Any]]
    components: list[type] = field(default_factory=list[type])

    def require(self, scope: str) -> Any:
        """A FastAPI dependency (``p = api.require("jobs:read")`` as a parameter default):
        authenticates the request, checks ``scope``, returns the principal."""
        from fastapi import Depends

        return Depends(self.principal(scope))

    def schema(self, struct: type) -> dict[str, str]:
        """``{"$ref": ...}`` to a msgspec Struct's OpenAPI component (added to the document)."""
        if struct not in self.components:
            self.components.append(struct)
        return {"$ref": f"#/components/schemas/{struct.__name__}"}


def mount_plugin_routes(app: FastAPI, ctx: ApiContext, host: PluginHost | None = None) -> list[str]:
    """Mount every registered ``api_route``; return the names mounted."""
    from crucible_core.plugins import get_host, strict_mode

    h = host if host is not None else get_host()
    mounted: list[str] = []
    for name, registration in sorted(h.registrations("api_route").items()):
        try:
            router = registration.create(api=ctx)
            app.include_router(router)
        except Exception as exc:
            if strict_mode():
                raise PluginError(
                    f"api routes {name!r} of plugin {registration.plugin}: {exc}",
                    hint="fix or disable the plugin (`crucible plugins` shows it)",
                ) from exc
            _log.warning("api routes %r of plugin %s left out: %s", name, registration.plugin, exc)
            continue
        mounted.append(name)
    return mounted

"""A Tinker-compatible HTTP server over any crucible TrainingBackend.

The real ``tinker`` SDK, unmodified, talks to it: point ``ServiceClient(base_url=...)``
(or ``TINKER_BASE_URL``) at :attr:`TinkerServer.url`. Importing this package is
cheap; the server's modules (starlette, uvicorn, tinker's protobuf schema) load
when a server is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crucible_tinker.server.config import FaultConfig, ServerConfig

if TYPE_CHECKING:
    from crucible_tinker.server.runner import TinkerServer, generate_api_key, start_server

__all__ = ["FaultConfig", "ServerConfig", "TinkerServer", "generate_api_key", "start_server"]

_LAZY = {"TinkerServer", "generate_api_key", "start_server"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from crucible_tinker.server import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'crucible_tinker.server' has no attribute {name!r}")

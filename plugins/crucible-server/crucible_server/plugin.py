"""crucible-server's hooks: the ``crucible serve`` and ``crucible tokens`` commands.

Nothing heavy is imported here: the commands are named by ``"module:attr"``
strings, and fastapi/uvicorn are imported only when ``serve`` runs.
"""

from __future__ import annotations

from crucible_core import RegisterCommand, hookimpl


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register(
        "serve",
        "crucible_server.cli:ServeCommand",
        summary="serve the REST and streaming API (and N job workers) on 127.0.0.1",
    )
    register(
        "tokens",
        "crucible_server.cli:TokensCommand",
        summary="API tokens: create (shown once), list, revoke",
    )

"""The two hottest routes answered without FastAPI's per-request machinery.

``GET /v1/jobs/{id}`` (what clients poll) and ``POST /v1/jobs`` are the
routes the API's throughput target is about (issue 19: >= 0.7x the requests/s
of a minimal FastAPI endpoint). Through FastAPI each request also paid for
five middlewares, routing, dependency solving and parameter validation, more
than the work of the answer itself (docs/benchmarks.md). :class:`HotRoutes`
sits in front of the whole middleware stack, recognises those two routes and
calls the same handlers the FastAPI routes call, after the same token check,
with the same problem+json answers for every refusal (body too large, bad
token, missing scope, over the rate, a bad header); every other request, and
these routes under a ``root_path`` (a mounted app), goes on to FastAPI
unchanged.

Because it is outside the stack it does what the stack would have done for
its two routes: it counts the answer (``count``), refuses bodies over
``max_body_bytes`` before reading them in full, and answers an unexpected
exception with the same 500 problem before re-raising it for the server log.

The FastAPI routes stay the reference: they are what ``/openapi.json``
describes and what answers with ``ServerSettings(fast_path=False)``, and the
test suite compares the two paths answer for answer. This module knows
nothing of jobs: the handlers come from :func:`crucible_server.app.build_app`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.responses import Response

from crucible_core.errors import CrucibleError, ValidationError
from crucible_server.auth import Principal
from crucible_server.guards import too_large

__all__ = ["IDEMPOTENCY_KEY_MAX", "HotRoutes", "idempotency_key_error"]

#: The longest ``Idempotency-Key`` header accepted (both paths check it).
IDEMPOTENCY_KEY_MAX: Final = 200

_JOBS: Final = "/v1/jobs"
_JOB_PREFIX: Final = "/v1/jobs/"

Authorize = Callable[[str | None, str], Principal]
GetJob = Callable[[str, Principal], Awaitable[Response]]
Submit = Callable[[bytes, Principal, str | None], Awaitable[Response]]
ErrorResponse = Callable[[Exception], Response]


def idempotency_key_error(value: str) -> ValidationError | None:
    """The refusal of an over-long ``Idempotency-Key``, worded as FastAPI words it."""
    if len(value) <= IDEMPOTENCY_KEY_MAX:
        return None
    return ValidationError(
        f"header.idempotency-key: String should have at most {IDEMPOTENCY_KEY_MAX} characters",
        path="$.header.idempotency-key",
    )


class _Disconnected(Exception):
    """The client went away before its request body arrived."""


class HotRoutes:
    """ASGI app: ``GET /v1/jobs/{id}`` and ``POST /v1/jobs`` answered directly, else ``app``.

    ``authorize(authorization_header, scope)`` returns the caller or raises
    (401/403/429); ``get_job`` and ``submit`` build the success response or
    raise. ``error`` turns any exception into its response (problem+json);
    ``count(method, status)`` records each answer.
    """

    def __init__(
        self,
        app: Any,
        *,
        authorize: Authorize,
        get_job: GetJob,
        submit: Submit,
        error: ErrorResponse,
        count: Callable[[str, int], None],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self._authorize = authorize
        self._get_job = get_job
        self._submit = submit
        self._error = error
        self._count = count
        self._max_body = max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path: str = scope["path"]
            method: str = scope["method"]
            if method == "GET" and path.startswith(_JOB_PREFIX):
                job_id = path[len(_JOB_PREFIX) :]
                if job_id and "/" not in job_id:
                    await self._answer(self._job(scope, job_id), scope, receive, send)
                    return
            elif method == "POST" and path == _JOBS:
                await self._answer(self._post(scope, receive), scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, work: Awaitable[Response], scope: Any, receive: Any, send: Any) -> None:
        unexpected: Exception | None = None
        try:
            response = await work
        except _Disconnected:
            return
        except CrucibleError as exc:
            response = self._error(exc)
        except Exception as exc:
            response, unexpected = self._error(exc), exc
        self._count(scope["method"], response.status_code)
        await response(scope, receive, send)
        if unexpected is not None:
            raise unexpected  # for the server's log, as Starlette's error middleware does

    async def _job(self, scope: Any, job_id: str) -> Response:
        authorization, _ = self._headers(scope)
        return await self._get_job(job_id, self._authorize(authorization, "jobs:read"))

    async def _post(self, scope: Any, receive: Any) -> Response:
        authorization, key = self._headers(scope)
        p = self._authorize(authorization, "jobs:write")
        if key is not None and (error := idempotency_key_error(key)) is not None:
            raise error
        return await self._submit(await self._body(receive), p, key)

    def _headers(self, scope: Any) -> tuple[str | None, str | None]:
        """The first ``Authorization`` and ``Idempotency-Key`` values (as Starlette reads
        them); TooLarge first if ``Content-Length`` is over the limit (any method)."""
        authorization: str | None = None
        key: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1") if authorization is None else authorization
            elif name == b"idempotency-key":
                key = value.decode("latin-1") if key is None else key
            elif name == b"content-length" and value.isdigit() and int(value) > self._max_body:
                raise too_large(self._max_body)
        return authorization, key

    async def _body(self, receive: Any) -> bytes:
        """The whole request body; TooLarge as soon as it exceeds the limit."""
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            seen += len(chunk)
            if seen > self._max_body:
                raise too_large(self._max_body)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

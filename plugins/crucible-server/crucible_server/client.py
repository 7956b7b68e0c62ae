"""A typed Python client of the Crucible API (httpx): sync :class:`Client`, async `AsyncClient`.

Answers are decoded into the same msgspec types the server encodes
(:class:`~crucible_core.ir.work.Job`, :class:`~crucible_server.views.JobView`...).
An error answer raises the Crucible error it carries: the class is chosen by
the problem's ``code`` (``not_found`` -> NotFound, ``forbidden`` ->
Forbidden...), so callers catch the same exceptions as in-process code.

:meth:`Client.events` follows a job's Server-Sent Events and, when the
connection drops, reconnects with ``Last-Event-ID`` so no event is lost or
repeated; it stops at the stream's ``end`` event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from crucible_core import errors as E
from crucible_core.ir.work import Job
from crucible_core.records.events import Event
from crucible_server.views import ArtifactList, JobPage, JobView, Submitted

__all__ = ["AsyncClient", "Client", "StreamEvent", "error_from_problem"]

_BY_CODE: dict[str, type[E.CrucibleError]] = {}
for _name in E.__all__:
    _cls = getattr(E, _name)
    if isinstance(_cls, type) and issubclass(_cls, E.CrucibleError):
        _BY_CODE.setdefault(_cls.code, _cls)


def error_from_problem(response: httpx.Response) -> E.CrucibleError:
    """The Crucible error a problem+json answer carries (CrucibleError if the code is unknown)."""
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {}
    code = str(body.get("code", "crucible_error"))
    message = str(body.get("detail") or f"HTTP {response.status_code}")
    cls = _BY_CODE.get(code, E.CrucibleError)
    exc = cls.__new__(cls)
    E.CrucibleError.__init__(exc, message, hint=body.get("hint"))
    exc.details = {"status": response.status_code}
    if isinstance(exc, E.BackendError):
        exc.retryable = bool(body.get("retryable", exc.default_retryable))
    if isinstance(exc, E.ValidationError):
        exc.path = str(body.get("path", "$"))
    return exc


@dataclass(frozen=True)
class StreamEvent:
    """One Server-Sent Event: ``id`` (None for the final ``end``), ``event`` kind, ``data``."""

    id: int | None
    event: str
    data: Any

    def as_event(self) -> Event:
        """The telemetry Event it carries (not for ``end``)."""
        return msgspec.convert(self.data, Event)


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        response.read()
        raise error_from_problem(response)
    return response


def _decode(response: httpx.Response, type_: type[Any]) -> Any:
    return msgspec.json.decode(_check(response).content, type=type_)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _job_body(job: Any) -> bytes:
    return msgspec.json.encode(job)


class _SseParser:
    """Incremental text/event-stream parser (WHATWG rules for id, event, data, comments)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> StreamEvent | None:
        if line == "":
            if not self._data:
                self._event = "message"
                return None
            text = "\n".join(self._data)
            out = StreamEvent(
                int(self._id) if self._id else None, self._event, msgspec.json.decode(text)
            )
            self._id, self._event, self._data = None, "message", []
            return out
        if line.startswith(":"):
            return None  # heartbeat / comment
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None


class Client:
    """Synchronous client: ``Client("http://127.0.0.1:8080", token="crk_...")``."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(token), timeout=timeout, transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, job: Any, *, idempotency_key: str | None = None) -> Submitted:
        """Enqueue a Job, TrainingJob or Experiment (a Struct or a plain dict)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        r = self._http.post(
            "/v1/jobs",
            content=_job_body(job),
            headers={"Content-Type": "application/json", **headers},
        )
        return _decode(r, Submitted)

    def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of jobs; pass ``page.next_cursor`` as ``cursor`` for the next."""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("status", status), ("kind", kind), ("cursor", cursor)):
            if value is not None:
                params[key] = value
        return _decode(self._http.get("/v1/jobs", params=params), JobPage)

    def iter_jobs(self, **filters: Any) -> Iterator[Job]:
        """Every job matching ``filters``, following the cursor."""
        cursor: str | None = None
        while True:
            page = self.list(cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get(self, job_id: str) -> JobView:
        """A job with progress, checkpoint and links."""
        return _decode(self._http.get(f"/v1/jobs/{job_id}"), JobView)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job."""
        return _decode(self._http.post(f"/v1/jobs/{job_id}/cancel"), Job)

    def retry(self, job_id: str) -> Job:
        """Retry a job that ended without success."""
        return _decode(self._http.post(f"/v1/jobs/{job_id}/retry"), Job)

    def artifacts(self, job_id: str) -> ArtifactList:
        """The files of a job's run directory."""
        return _decode(self._http.get(f"/v1/jobs/{job_id}/artifacts"), ArtifactList)

    def download(self, job_id: str, path: str) -> tuple[bytes, str]:
        """``(content, sha256 announced by the server)`` of one artifact."""
        r = _check(self._http.get(f"/v1/jobs/{job_id}/artifacts/{path}"))
        return r.content, r.headers["x-checksum-sha256"]

    def events(
        self, job_id: str, *, last_event_id: int | None = None, reconnects: int = 5
    ) -> Iterator[StreamEvent]:
        """The job's events until ``end`` (included), resuming after dropped connections."""
        last = last_event_id
        tries = 0
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
                    _check(r)
                    parser = _SseParser()
                    for line in r.iter_lines():
                        ev = parser.feed(line)
                        if ev is None:
                            continue
                        tries = 0
                        if ev.id is not None:
                            last = ev.id
                        yield ev
                        if ev.event == "end":
                            return
            except httpx.TransportError:
                tries += 1
                if tries > reconnects:
                    raise


class AsyncClient:
    """Asynchronous client with the same methods as :class:`Client` (awaitable)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(token), timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def submit(self, job: Any, *, idempotency_key: str | None = None) -> Submitted:
        """Enqueue a Job, TrainingJob or Experiment."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        r = await self._http.post(
            "/v1/jobs",
            content=_job_body(job),
            headers={"Content-Type": "application/json", **headers},
        )
        return _decode(r, Submitted)

    async def get(self, job_id: str) -> JobView:
        """A job with progress, checkpoint and links."""
        return _decode(await self._http.get(f"/v1/jobs/{job_id}"), JobView)

    async def list(self, *, limit: int = 100, cursor: str | None = None) -> JobPage:
        """One page of jobs."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return _decode(await self._http.get("/v1/jobs", params=params), JobPage)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job."""
        return _decode(await self._http.post(f"/v1/jobs/{job_id}/cancel"), Job)

    async def retry(self, job_id: str) -> Job:
        """Retry a job that ended without success."""
        return _decode(await self._http.post(f"/v1/jobs/{job_id}/retry"), Job)

    async def events(
        self, job_id: str, *, last_event_id: int | None = None
    ) -> AsyncIterator[StreamEvent]:
        """The job's events until ``end`` (included)."""
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        async with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
            if r.status_code >= 400:
                await r.aread()
                raise error_from_problem(r)
            parser = _SseParser()
            async for line in r.aiter_lines():
                ev = parser.feed(line)
                if ev is not None:
                    yield ev
                    if ev.event == "end":
                        return

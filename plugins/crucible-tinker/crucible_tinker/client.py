"""The connection to a Tinker server: the SDK's ServiceClient, and how its calls are run.

:class:`Connection` owns the one ``tinker.ServiceClient`` of a backend (made
on first use; its session starts with the first call), a small thread pool
for chained SDK calls, the request counters, and the rules every SDK call
follows: a call that may block without a timeout of its own is bounded by
``timeout`` (:meth:`Connection.blocking`); an SDK future's result is
converted on completion (:meth:`Connection.then`); any SDK exception becomes
a crucible error with the API key redacted (:func:`map_error`), never
retryable, because the SDK has already retried it.

``tinker`` and ``httpx`` are imported when a call needs them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from crucible_core.errors import (
    AuthError,
    BackendError,
    CrucibleError,
    DeadlineExceeded,
    NotFound,
)
from crucible_core.ir.backend import Completion, Health
from crucible_tinker.credentials import Secret, redact, refused_key_hint

if TYPE_CHECKING:
    import tinker

__all__ = ["Connection", "map_error"]

log = logging.getLogger("crucible_tinker")

T = TypeVar("T")
U = TypeVar("U")


def map_error(exc: BaseException, what: str, secret: Secret | None) -> CrucibleError:
    """A tinker SDK exception as a crucible error (never retryable: the SDK already retried)."""
    if isinstance(exc, CrucibleError):
        return exc
    import tinker

    text = redact(f"{type(exc).__name__}: {exc}", [secret])
    message = f"tinker: {what} failed: {text}"
    if isinstance(exc, tinker.AuthenticationError | tinker.PermissionDeniedError):
        return AuthError(message, hint=refused_key_hint(secret))
    if isinstance(exc, tinker.NotFoundError):
        return NotFound(message)
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(message, retryable=False)
    if isinstance(exc, tinker.RequestFailedError):
        category = str(getattr(exc, "category", "unknown"))
        return BackendError(
            message, retryable=False, category=category, request_id=str(exc.request_id)
        )
    if isinstance(exc, tinker.APIConnectionError):
        return BackendError(message, hint="is the server up and base_url right?", retryable=False)
    if isinstance(exc, tinker.APIStatusError):
        # Keep the server's request id (where it sent one) so the failure can be traced.
        request_id = exc.response.headers.get("x-request-id")
        extra = {"request_id": request_id} if request_id else {}
        return BackendError(message, retryable=False, status=exc.status_code, **extra)
    return BackendError(message, retryable=False)


class Connection:
    """One backend's link to a Tinker server (see the module docstring)."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: Secret,
        timeout: float,
        user_metadata: Mapping[str, str] | None = None,
        project_id: str | None = None,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.timeout = float(timeout)
        self.user_metadata = dict(user_metadata or {})
        self.project_id = project_id
        self._lock = threading.Lock()
        self._service: tinker.ServiceClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="crucible-tinker")
        self.counters: dict[str, float] = {
            "requests": 0.0,
            "errors": 0.0,
            "completion_tokens": 0.0,
            "prompt_tokens": 0.0,
            "latency_ms_total": 0.0,
        }
        self._closed = False

    def error(self, exc: BaseException, what: str) -> CrucibleError:
        """An SDK exception as a crucible error, with the API key redacted from its message."""
        return map_error(exc, what, self.api_key)

    def blocking(self, fn: Callable[[], T], what: str, timeout: float | None = None) -> T:
        """Run an SDK call that may block without a timeout of its own, bounded by ``timeout``."""
        limit = self.timeout if timeout is None else timeout
        # A thread of its own, not the pool: chained calls running on the pool (a sampler
        # opened after a save) call this too, and must never wait on a pool they fill.
        future: ConcurrentFuture[T] = ConcurrentFuture()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name="crucible-tinker-call", daemon=True).start()
        try:
            return future.result(limit)
        except TimeoutError:
            raise DeadlineExceeded(
                f"tinker: {what} did not finish within {limit:.0f} s",
                hint="check base_url and that the server is up; raise the backend option timeout",
                retryable=False,
            ) from None
        except CrucibleError:
            raise
        except BaseException as exc:
            raise self.error(exc, what) from None

    def service(self) -> tinker.ServiceClient:
        """The SDK ServiceClient (made on first use; its session starts with the first call)."""
        import tinker

        with self._lock:
            if self._closed:
                raise BackendError("the tinker backend is closed", retryable=False)
            if self._service is None:
                self._service = tinker.ServiceClient(
                    user_metadata=self.user_metadata or None,
                    project_id=self.project_id,
                    base_url=self.base_url,
                    api_key=self.api_key.reveal(),
                )
            return self._service

    def then(
        self, source: ConcurrentFuture[T], fn: Callable[[T], U], what: str
    ) -> ConcurrentFuture[U]:
        """A future of ``fn(result)``; SDK errors become crucible errors (redacted)."""
        out: ConcurrentFuture[U] = ConcurrentFuture()

        def done(f: ConcurrentFuture[T]) -> None:
            if f.cancelled():
                out.cancel()
                return
            exc = f.exception()
            if exc is not None:
                self.counters["errors"] += 1
                out.set_exception(exc if isinstance(exc, CrucibleError) else self.error(exc, what))
                return
            try:
                out.set_result(fn(f.result()))
            except BaseException as err:
                out.set_exception(err if isinstance(err, CrucibleError) else self.error(err, what))

        source.add_done_callback(done)
        return out

    def submit(self, fn: Callable[[], T]) -> ConcurrentFuture[T]:
        """Run ``fn`` on the connection's small thread pool (chained SDK calls)."""
        return self._pool.submit(fn)

    def record(self, completions: Sequence[Completion], latency_ms: float) -> None:
        """Count one sampling request and its tokens."""
        m = self.counters
        m["requests"] += 1
        m["latency_ms_total"] += latency_ms
        for c in completions:
            m["completion_tokens"] += c.usage.completion_tokens
            m["prompt_tokens"] += c.usage.prompt_tokens

    def url(self, path: str) -> str:
        """The server's URL for ``path`` (``base_url``, else the SDK's resolution of it)."""
        from tinker.lib.base_url import resolve_base_url

        return resolve_base_url(self.base_url).rstrip("/") + path

    def health_check(self) -> Health:
        """The server's ``healthz``, with its latency."""
        import httpx

        url = self.url("/api/v1/healthz")
        start = time.perf_counter()
        try:
            response = httpx.get(url, timeout=min(10.0, self.timeout))
        except httpx.HTTPError as exc:
            return Health(ok=False, detail=redact(f"{type(exc).__name__}: {exc}", [self.api_key]))
        latency = (time.perf_counter() - start) * 1000
        ok = response.status_code == 200
        return Health(ok=ok, detail=f"HTTP {response.status_code}", latency_ms=latency)

    def served_backend_name(self) -> str | None:
        """The crucible backend a ``crucible serve-tinker`` server names at
        ``/crucible/v1/info``; None for any other server (Tinker itself) or none reachable.
        AuthError when the server refuses the key (every later call would fail too)."""
        import httpx
        from tinker.lib.base_url import resolve_base_url

        try:
            response = httpx.get(
                self.url("/crucible/v1/info"),
                headers={"X-API-Key": self.api_key.reveal()},
                timeout=min(10.0, self.timeout),
            )
        except httpx.HTTPError:
            return None
        if response.status_code in (401, 403):
            raise AuthError(
                f"tinker: {resolve_base_url(self.base_url)} refused the API key "
                f"(HTTP {response.status_code})",
                hint=refused_key_hint(self.api_key),
            )
        try:
            name = response.json().get("backend") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            return None
        return name if isinstance(name, str) else None

    def close(self) -> None:
        """Finish the SDK session (its heartbeats stop) and release threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            service = self._service
            self._service = None
        if service is not None:
            try:
                service.close("success").result(timeout=min(30.0, self.timeout))
            except Exception as exc:  # the session ends server-side when heartbeats stop
                log.warning("closing the tinker session failed: %s", self.error(exc, "close"))
        self._pool.shutdown(wait=False, cancel_futures=True)

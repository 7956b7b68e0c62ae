"""Running the API under uvicorn, with job slots in threads or worker processes.

:class:`ApiServer` binds its socket first (port 0 picks a free one, so
``.url`` is known before any request), then serves in a background thread
(:meth:`~ApiServer.start`, for tests, benchmarks and embedding) or in the
calling thread (:meth:`~ApiServer.serve_forever`, for ``crucible serve``).
With ``workers > 0`` a :class:`~crucible_core.queue.worker.Worker` with
that many slots runs beside the API on the same scheduler, in threads of
this process (tests, embedding). With ``worker_processes > 0`` (what
``crucible serve --workers N`` uses) that many worker processes run instead,
children of this one in its process group, restarted if they die
(:class:`~crucible_server.supervisor.WorkerGroup`): a training loop never
shares the API's interpreter lock.

Stopping (SIGTERM/SIGINT under ``serve_forever``, or :meth:`~ApiServer.stop`):
the API stops accepting connections and the worker drains at the same time
(no new claims; running jobs get ``drain_timeout_s`` to finish, then are told
to stop, and a job that stops is released back to the queue for the next
worker, its last checkpoint recorded). Nothing acknowledged is lost: jobs
live in SQLite, and a job whose process is killed outright is requeued when
its lease lapses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crucible_core.errors import ConfigError
from crucible_server.app import ServerSettings, build_app
from crucible_server.tokens import TokenStore

if TYPE_CHECKING:
    from crucible_core.plugins import PluginHost
    from crucible_core.queue.scheduler import Scheduler
    from crucible_core.queue.worker import Worker
    from crucible_server.supervisor import WorkerGroup

__all__ = ["ApiServer", "check_bind", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, allow_remote: bool, has_tokens: bool) -> None:
    """Refuse a non-loopback bind without ``--allow-remote`` and an active token store."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise ConfigError(
            f"--host {host} would accept connections from other machines",
            hint="pass --allow-remote (and create tokens first), or keep --host 127.0.0.1",
        )
    if not has_tokens:
        raise ConfigError(
            f"--host {host} needs a token store: no active token exists",
            hint="create one first: crucible tokens create --tenant T --scopes jobs:write",
        )


class ApiServer:
    """The API (and optionally a worker) on ``host:port`` (module docstring)."""

    def __init__(
        self,
        scheduler: Scheduler | None = None,
        *,
        tokens: TokenStore | None = None,
        settings: ServerSettings | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        workers: int = 0,
        worker_processes: int = 0,
        lease_s: float = 30.0,
        drain_timeout_s: float = 30.0,
        grace_s: float = 5.0,
        log_level: str = "warning",
        host_plugins: PluginHost | None = None,
        configure_logging: bool = False,
    ) -> None:
        from crucible_core.queue.scheduler import Scheduler

        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self.tokens = tokens
        self.settings = settings or ServerSettings()
        self.host = host
        self.port = port
        self.workers = workers
        self.worker_processes = worker_processes
        self.group: WorkerGroup | None = None
        self.lease_s = lease_s
        self.drain_timeout_s = drain_timeout_s
        self.grace_s = grace_s
        self.log_level = log_level
        # uvicorn's own logging set-up (dictConfig) shuts down every handler of the
        # process; only the CLI, which owns its process, asks for it.
        self.configure_logging = configure_logging
        self.host_plugins = host_plugins
        self.worker: Worker | None = None
        self._sock: socket.socket | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._worker_thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` once bound."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections
        # only when the listening socket says TCP. Without it, a response written as
        # headers then body waited for the client's delayed ACK (~40 ms a request).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror}",
                hint="pick another --port (0 picks a free one)",
            ) from None
        sock.listen(2048)
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        self._sock = sock
        return sock

    def _build(self) -> Any:
        import uvicorn
        from uvicorn.config import LOGGING_CONFIG

        app = build_app(
            self.scheduler, tokens=self.tokens, settings=self.settings, host=self.host_plugins
        )
        owner = self

        class _Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                owner.stop_worker()
                super().handle_exit(sig, frame)

            async def shutdown(self, sockets: Any = None) -> None:
                # Open event streams would hold the graceful shutdown until its timeout:
                # end them first (clients resume elsewhere with Last-Event-ID).
                app.state.crucible_feeds.close()
                await super().shutdown(sockets)

        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level=self.log_level,
            access_log=False,
            timeout_graceful_shutdown=max(1, round(self.grace_s)),
            log_config=LOGGING_CONFIG if self.configure_logging else None,
        )
        return _Server(config)

    def _start_worker(self) -> None:
        if self.worker_processes > 0:
            from crucible_server.supervisor import WorkerGroup

            self.group = WorkerGroup(
                self.worker_processes,
                lease_s=self.lease_s,
                drain_timeout_s=self.drain_timeout_s,
                grace_s=self.grace_s,
            ).start()
        if self.workers <= 0:
            return
        from crucible_core.queue.worker import Worker

        self.worker = Worker(
            self.scheduler,
            concurrency=self.workers,
            lease_s=self.lease_s,
            drain_timeout_s=self.drain_timeout_s,
        )
        self._worker_thread = threading.Thread(
            target=self.worker.run, name="crucible-server-worker", daemon=True
        )
        self._worker_thread.start()

    def stop_worker(self) -> None:
        """Start draining the worker (non-blocking)."""
        if self.worker is not None:
            self.worker.stop()
        if self.group is not None:
            self.group.stop()

    def _join_worker(self) -> None:
        if self.group is not None:
            self.group.join()
        if self._worker_thread is not None:
            self._worker_thread.join(self.drain_timeout_s + 10.0)
            self._worker_thread = None

    @property
    def app(self) -> Any:
        """The ASGI application being served (``None`` before the server starts)."""
        return None if self._server is None else self._server.config.app

    async def _serve(self, sock: socket.socket) -> None:
        self._server = self._build()
        task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started and not task.done():
            await asyncio.sleep(0.01)
        self._ready.set()
        await task

    def _run_thread(self, sock: socket.socket) -> None:
        try:
            _run(self._serve(sock))
        except BaseException as exc:  # reported by start()
            self._error = exc
        finally:
            self._ready.set()

    def start(self, timeout: float = 30.0) -> ApiServer:
        """Serve in a background thread; returns once connections are accepted."""
        sock = self._bind()
        self._thread = threading.Thread(
            target=self._run_thread, args=(sock,), name="crucible-server", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise RuntimeError(f"the API server did not start: {self._error!r}")
        self._start_worker()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the API and drain the worker (idempotent)."""
        self.stop_worker()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._join_worker()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def serve_forever(self, ready: Any = None) -> None:
        """Serve in this thread until SIGTERM/SIGINT, then drain the worker and return."""
        sock = self._bind()
        self._start_worker()
        if ready is not None:
            ready(self)
        try:
            _run(self._serve(sock))
        finally:
            self.stop_worker()
            self._join_worker()
            sock.close()

    def __enter__(self) -> ApiServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (as ``uvicorn.run`` would), else asyncio's
    own loop: uvloop's transports write responses in C, a large part of a request's cost."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def default_tokens(path: Path | None = None) -> TokenStore:
    """The token store under ``$CRUCIBLE_HOME``."""
    return TokenStore(path)

"""Run the Tinker-compatible server: in-process for tests and embedding, or in the foreground.

::

    from crucible_tinker.server import TinkerServer

    with TinkerServer("local", api_keys=["tml-secret"]) as server:   # port 0: ephemeral
        client = tinker.ServiceClient(base_url=server.url, api_key="tml-secret")
        ...

The server listens on ``host:port`` (``127.0.0.1`` and an ephemeral port by
default), serves from its own thread and event loop, and on :meth:`stop`
stops accepting requests, finishes the ones in flight (up to a grace period),
closes every model's crucible session and joins its threads.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from crucible_tinker.server.config import FaultConfig, ServerConfig

__all__ = ["TinkerServer", "generate_api_key", "start_server"]

log = logging.getLogger("crucible_tinker.server")


def generate_api_key() -> str:
    """A fresh random key in the form the SDK accepts (``tml-`` + 40 hex digits)."""
    return f"tml-{secrets.token_hex(20)}"


class TinkerServer:
    """A Tinker-compatible HTTP server over a crucible TrainingBackend.

    ``backend`` is a registered backend name (built with
    ``crucible_core.get_backend(name, **backend_options)``) or a backend
    object. ``api_keys`` default to one generated key (:attr:`api_key`).
    ``config`` overrides every protocol setting at once; otherwise
    ``long_poll_s``, ``faults`` and the other keywords of :class:`ServerConfig`
    may be passed directly.
    """

    def __init__(
        self,
        backend: Any = "local",
        *,
        backend_options: Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Sequence[str] | None = None,
        config: ServerConfig | None = None,
        faults: FaultConfig | None = None,
        state_dir: str | Path | None = None,
        log_level: str = "warning",
        grace_s: float = 2.0,
        configure_logging: bool = False,
        **settings: Any,
    ) -> None:
        if config is None:
            keys = tuple(api_keys) if api_keys else (generate_api_key(),)
            config = ServerConfig(api_keys=keys, faults=faults or FaultConfig(), **settings)
        elif api_keys or faults or settings:
            raise TypeError("pass either config=ServerConfig(...) or individual settings")
        self.config = config
        self._backend_spec = backend
        self._backend_options = dict(backend_options or {})
        self.host = host
        self._port = port
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.log_level = log_level
        # uvicorn's own logging set-up (dictConfig) shuts down every handler of the
        # process; only the CLI, which owns its process, asks for it.
        self.configure_logging = configure_logging
        self.grace_s = grace_s
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._bound_port: int | None = None
        self._owns_backend = isinstance(backend, str)
        self.backend: Any = None
        self.engine: Any = None
        self.faults: Any = None

    # -- addresses -------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("the server is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        """The base URL to give the SDK (``ServiceClient(base_url=...)``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_key(self) -> str:
        """The first accepted API key."""
        return self.config.api_keys[0]

    @property
    def backend_name(self) -> str:
        spec = self._backend_spec
        return spec if isinstance(spec, str) else type(spec).__name__

    # -- lifecycle -------------------------------------------------------------

    def _prepare(self) -> socket.socket:
        if self._backend_spec is None:
            raise ValueError("a backend is required")
        if isinstance(self._backend_spec, str):
            import crucible_core

            self.backend = crucible_core.get_backend(self._backend_spec, **self._backend_options)
        else:
            self.backend = self._backend_spec
        # proto=IPPROTO_TCP matters: asyncio turns Nagle off (TCP_NODELAY) only on sockets
        # whose proto says TCP, and accepted sockets inherit it. With proto 0 every answer
        # waited ~40 ms for a delayed ACK (headers and body are written separately).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._port))
            # Listening at once: a client that connects before the server loop runs waits in
            # the backlog instead of being refused.
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._bound_port = int(sock.getsockname()[1])
        return sock

    def _build(self, loop: asyncio.AbstractEventLoop) -> Any:
        import uvicorn
        from uvicorn.config import LOGGING_CONFIG

        from crucible_tinker.server.app import build_app
        from crucible_tinker.server.engine import Engine
        from crucible_tinker.server.faults import FaultInjector, FaultMiddleware, install_log_filter
        from crucible_tinker.server.futures import FutureStore

        futures = FutureStore(loop, ttl_s=self.config.result_ttl_s)
        self.engine = Engine(
            self.backend,
            backend_name=self.backend_name,
            config=self.config,
            futures=futures,
            state_dir=self.state_dir,
        )
        app: Any = build_app(self.engine, self.config)
        self.faults = FaultInjector(self.config.faults)
        install_log_filter()
        # Always in place (a no-op while no fault is configured): set_faults() switches it on.
        app = FaultMiddleware(app, self.faults)
        server_config = uvicorn.Config(
            app,
            http="h11",
            lifespan="off",
            log_level=self.log_level,
            access_log=False,
            timeout_graceful_shutdown=max(1, round(self.grace_s)),
            timeout_keep_alive=30,
            log_config=LOGGING_CONFIG if self.configure_logging else None,
        )
        return uvicorn.Server(server_config)

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        try:
            self._server = self._build(loop)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started and not task.done():
            await asyncio.sleep(0.01)
        self._ready.set()
        reaper = asyncio.ensure_future(self._reap_forever())
        try:
            await task
        finally:
            reaper.cancel()

    async def _reap_forever(self) -> None:
        """Finish sessions whose clients went away (see ``ServerConfig.session_ttl_s``)."""
        period = max(1.0, min(30.0, self.config.session_ttl_s / 4))
        while True:
            await asyncio.sleep(period)
            await asyncio.get_running_loop().run_in_executor(None, self.engine.reap)

    def _run_thread(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(sock))
        except BaseException as exc:  # reported to start() or stop()
            if self._error is None:
                self._error = exc
        finally:
            self._close_engine()
            self._stopped.set()
            self._ready.set()

    def _close_engine(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def start(self, timeout: float = 30.0) -> TinkerServer:
        """Start serving in a background thread; returns once requests are accepted."""
        if self._thread is not None:
            raise RuntimeError("the server was already started")
        sock = self._prepare()
        self._thread = threading.Thread(
            target=self._run_thread, args=(sock,), name="tinker-server", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"the Tinker-compatible server did not start within {timeout} s")
        if self._error is not None or self._stopped.is_set():
            err = self._error
            self.stop()
            raise RuntimeError(f"the Tinker-compatible server failed to start: {err!r}") from err
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving, close every model and join the server thread (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the Tinker-compatible server did not stop within {timeout} s")
            self._thread = None
        if self._sock is not None:
            self._sock.close()
        if self._owns_backend and self.backend is not None:
            close = getattr(self.backend, "close", None)
            if callable(close):
                close()
            self.backend = None

    def serve_forever(self, ready: Callable[[TinkerServer], None] | None = None) -> None:
        """Serve in the calling thread until interrupted (Ctrl-C stops it gracefully).

        ``ready(self)`` is called once the socket is bound (``self.url`` is final).
        """
        sock = self._prepare()
        if ready is not None:
            ready(self)
        try:
            asyncio.run(self._serve(sock))
        finally:
            # Also on Ctrl-C (uvicorn re-raises the signal once it has shut down gracefully).
            self._close_engine()
            sock.close()
            if self._owns_backend and self.backend is not None:
                close = getattr(self.backend, "close", None)
                if callable(close):
                    close()

    def __enter__(self) -> TinkerServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- introspection -----------------------------------------------------------

    def set_faults(self, faults: FaultConfig) -> None:
        """Inject ``faults`` from now on (``FaultConfig()`` switches injection off)."""
        if self.faults is None:
            raise RuntimeError("the server is not started")
        self.faults.configure(faults)

    def fault_counts(self) -> dict[str, int]:
        """What the fault injector did since it was last configured."""
        return dict(self.faults.counts) if self.faults is not None else {}

    def applied_steps(self) -> list[tuple[str, int, int]]:
        """Every optimizer step the backend applied: ``(model_id, seq_id, step)``."""
        if self.engine is None:
            return []
        return [(a.model_id, a.seq_id, a.step) for a in list(self.engine.applied_steps)]


def start_server(backend: Any = "local", **kwargs: Any) -> TinkerServer:
    """Build and start a :class:`TinkerServer` (ephemeral port by default); see ``.url``."""
    return TinkerServer(backend, **kwargs).start()

"""A real HTTP endpoint on 127.0.0.1 for tests of exporters and sinks.

Why here: the sinks' tests (crucible-mlflow's tracking server that hangs,
crucible-openlineage's lineage server that records or hangs) and the sinks
benchmark need the same thing, and a plugin may depend on ``crucible_core``
only, not on another plugin's tests. Real HTTP over loopback, in a daemon
thread, bounded in time: a request hangs at most ``hang_s`` seconds, and
:meth:`LocalEndpoint.close` (or leaving the ``with`` block) releases every
hanging request at once.

Contract: every request of a method in ``methods`` is counted
(:attr:`LocalEndpoint.requests`) when it arrives, its path and body are
recorded, then it waits ``hang_s`` seconds (or until closed) and is answered
``status`` with an empty body. Other methods get 501 from the standard
library, uncounted.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["LocalEndpoint"]


class LocalEndpoint:
    """An HTTP server on 127.0.0.1 that records requests and may hang (module docstring)."""

    def __init__(
        self,
        *,
        hang_s: float = 0.0,
        status: int = 200,
        methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE"),
    ) -> None:
        #: Requests received (counted before hanging).
        self.requests = 0
        #: Request paths and bodies, in the order they arrived.
        self.paths: list[str] = []
        self.bodies: list[bytes] = []
        #: Set to answer every hanging request now.
        self.release = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with outer._lock:  # pyright: ignore[reportPrivateUsage]
                    outer.requests += 1
                    outer.paths.append(self.path)
                    outer.bodies.append(body)
                if hang_s:
                    outer.release.wait(hang_s)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        for method in methods:
            setattr(Handler, f"do_{method}", Handler._serve)  # pyright: ignore[reportPrivateUsage]
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="local-endpoint", daemon=True
        )
        self._thread.start()

    def json(self) -> list[Any]:
        """Every non-empty body so far, parsed as JSON."""
        with self._lock:
            bodies = list(self.bodies)
        return [json.loads(b) for b in bodies if b]

    def close(self) -> None:
        """Answer hanging requests and stop serving. Idempotent."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> LocalEndpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""Seeded fault injection in front of the server (see :class:`FaultConfig`).

Implemented as an ASGI middleware outside the application, so faults hit the
real HTTP exchange: a delay holds the request, an error answers a 5xx without
handling it, and a drop sends the status line and headers and then closes the
connection (uvicorn closes the transport when an app fails after starting its
answer), so the client sees a connection cut mid-response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from crucible_tinker.server.config import FaultConfig

__all__ = ["DroppedConnection", "FaultDecision", "FaultInjector", "FaultMiddleware"]

_PREFIX = "/api/v1/"


class DroppedConnection(Exception):
    """Raised inside the ASGI app to make uvicorn cut the connection (a deliberate fault)."""


class _QuietDrops(logging.Filter):
    """Keeps uvicorn from logging a deliberate drop as an application error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection)


_quiet = _QuietDrops()


def install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if _quiet not in logger.filters:
        logger.addFilter(_quiet)


@dataclass(frozen=True)
class FaultDecision:
    delay_s: float = 0.0
    error: bool = False
    drop_before: bool = False
    drop_after: bool = False


class FaultInjector:
    """Draws one decision per request from ``random.Random(seed)`` and counts what it did."""

    def __init__(self, config: FaultConfig) -> None:
        self._lock = threading.Lock()
        self.config = config
        self._rng = random.Random(config.seed)
        self.counts: Counter[str] = Counter()

    def configure(self, config: FaultConfig) -> None:
        """Switch to ``config`` (a fresh ``Random(config.seed)``, counts reset)."""
        with self._lock:
            self.config = config
            self._rng = random.Random(config.seed)
            self.counts = Counter()

    def applies_to(self, path: str) -> bool:
        if not path.startswith(_PREFIX):
            return False
        paths = self.config.paths
        return paths is None or path[len(_PREFIX) :] in paths

    def decide(self, path: str) -> FaultDecision:
        with self._lock:
            c = self.config
            if not c.active or not self.applies_to(path):
                return FaultDecision()
            r_delay, r_error, r_drop, r_after = (self._rng.random() for _ in range(4))
            delay = c.latency_s + (c.delay_s if r_delay < c.delay_fraction else 0.0)
            decision = FaultDecision(
                delay_s=delay,
                error=r_error < c.error_fraction,
                drop_before=r_drop < c.drop_fraction,
                drop_after=r_after < c.drop_after_fraction,
            )
            name = path[len(_PREFIX) :]
            self.counts["requests"] += 1
            if delay > c.latency_s:
                self.counts["delayed"] += 1
            if decision.error:
                self.counts["errors"] += 1
                self.counts[f"errors:{name}"] += 1
            elif decision.drop_before:
                self.counts["dropped_before"] += 1
                self.counts[f"dropped_before:{name}"] += 1
            elif decision.drop_after:
                self.counts["dropped_after"] += 1
                self.counts[f"dropped_after:{name}"] += 1
            return decision


async def _drain(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class FaultMiddleware:
    """ASGI middleware applying :class:`FaultInjector` decisions."""

    def __init__(self, app: Any, injector: FaultInjector) -> None:
        self.app = app
        self.injector = injector
        install_log_filter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        decision = self.injector.decide(scope["path"])
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)
        if decision.error:
            await _drain(receive)
            body = json.dumps({"detail": "injected fault"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": self.injector.config.error_status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after-ms", str(self.injector.config.retry_after_ms).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if decision.drop_before:
            await _drain(receive)
            await self._cut(send)
        if decision.drop_after:

            async def swallow(message: Any) -> None:
                return None

            await self.app(scope, receive, swallow)
            await self._cut(send)
        await self.app(scope, receive, send)

    @staticmethod
    async def _cut(send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"4096"),
                ],
            }
        )
        raise DroppedConnection("injected connection drop")

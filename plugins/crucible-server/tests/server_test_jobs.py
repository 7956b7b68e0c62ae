"""Job handlers for the server tests (``custom`` jobs: ``server_test_jobs:NAME``)."""

from __future__ import annotations

import time
from typing import Any


def ticks(ctx: Any, *, n: int, delay_s: float = 0.0) -> int:
    """Emit ``n`` ``test.tick`` events (step 1..n), ``delay_s`` apart."""
    for i in range(1, n + 1):
        ctx.emit("test.tick", step=i, i=i)
        if delay_s:
            time.sleep(delay_s)
    return n


def until_cancelled(ctx: Any, *, limit_s: float = 30.0) -> str:
    """Run until cancelled (or ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    while not ctx.cancel.is_set():
        if time.monotonic() > deadline:
            return "never cancelled"
        time.sleep(0.01)
    return f"stopped: {ctx.cancel.reason}"


def boom(ctx: Any) -> None:
    """Fail at once (not retryable)."""
    raise ValueError("boom")

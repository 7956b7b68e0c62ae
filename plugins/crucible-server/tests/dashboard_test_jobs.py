"""Job handlers for the dashboard tests (``custom`` jobs: ``dashboard_test_jobs:NAME``)."""

from __future__ import annotations

import time
from typing import Any


def curves(ctx: Any, *, n: int, delay_s: float = 0.0, metric: str = "accuracy") -> int:
    """``n`` ``train.step`` events with a loss and one metric named ``metric``, ``delay_s``
    apart (stopping early when cancelled), then one ``train.checkpoint``."""
    ctx.emit("train.start", total_steps=n)
    for i in range(1, n + 1):
        if ctx.cancel.is_set():
            return i
        ctx.emit("train.step", step=i, loss=1.0 / i, metrics={metric: i / n})
        if delay_s:
            time.sleep(delay_s)
    ctx.emit("train.checkpoint", step=n, uri=f"file:///checkpoints/{n}", checkpoint_kind="state")
    return n

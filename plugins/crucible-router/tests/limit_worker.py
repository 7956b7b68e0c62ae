"""A separate process for test_limits: routes calls through a rate-limited member.

Usage: ``python limit_worker.py DB MODE SECONDS``. Prints one JSON object: the
``time.monotonic`` (system-wide) start/end of every call the member ran, and how many
calls were refused. ``MODE`` is ``rate`` (requests_per_s=20, burst=1) or ``inflight``
(max_in_flight=2, three threads, each call holds its slot 30 ms).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any

from crucible_router import RoutedBackend

from crucible_core.errors import BackendError
from crucible_core.ir import Capabilities, Completion, Health, Prompt, SamplingParams

CALLS: list[tuple[float, float]] = []


class Timed:
    """A backend whose every call is recorded (monotonic start, end); holds ``hold_s``."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.lock = threading.Lock()

    def capabilities(self) -> Capabilities:
        return Capabilities(backend_id="timed")

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        start = time.monotonic()
        if self.hold_s:
            time.sleep(self.hold_s)
        with self.lock:
            CALLS.append((start, time.monotonic()))
        return Completion(text="ok", backend_id="timed")

    def sample(self, prompt: Prompt, params: SamplingParams) -> Any:
        f: Future[list[Completion]] = Future()
        f.set_result([self.complete(prompt, params)])
        return f

    def health_check(self) -> Health:
        return Health(ok=True)

    def close(self) -> None:
        pass


def main() -> None:
    db, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    if mode == "rate":
        limits: dict[str, Any] = {"requests_per_s": 20, "burst": 1, "max_wait_s": 0.5}
        threads, hold = 2, 0.0
    else:
        limits = {"max_in_flight": 2, "max_wait_s": 5.0, "poll_s": 0.002}
        threads, hold = 3, 0.03
    router = RoutedBackend({"backend": Timed(hold), "limits": limits}, state_file=db)
    refused = [0]
    stop = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop:
            try:
                router.complete(Prompt(text="hi"), SamplingParams(max_tokens=1))
            except BackendError:
                refused[0] += 1

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    router.close()
    print(json.dumps({"calls": CALLS, "refused": refused[0]}))


if __name__ == "__main__":
    main()

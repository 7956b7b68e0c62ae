"""Small timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Sequence


def per_call(fn: Callable[[], object], *, number: int, repeat: int = 7) -> float:
    """Best-of-``repeat`` seconds per call of ``fn`` over ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def command_ms(argv: Sequence[str], *, runs: int = 15, env: dict[str, str] | None = None) -> float:
    """Median wall-clock milliseconds of running ``argv`` to completion."""
    samples: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def interleaved_ms(
    commands: Sequence[Sequence[str]], *, runs: int = 21, env: dict[str, str] | None = None
) -> list[float]:
    """Median wall-clock milliseconds of each command, runs interleaved round-robin.

    On a shared machine the load drifts within seconds; interleaving exposes
    every command to the same drift, so their ratios stay meaningful.
    """
    samples: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for i, argv in enumerate(commands):
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, env=env)
            samples[i].append((time.perf_counter() - start) * 1000)
    return [statistics.median(s) for s in samples]

"""Hedging: tail latency cut vs extra requests, on a heavy-tailed backend and a real sampler.

Target (issue 17): p99 and p99.9 cut by >= 60 % at <= 5 % extra requests vs no
hedging; adaptive >= fixed-p95; the budget never exceeded (the maximum hedge share
over every window of primaries is printed).

The simulated backend really sleeps: a lognormal body (median --median-ms, sigma
0.3) and 2 % stragglers at 10x. Requests come from --clients concurrent callers, so
the run takes seconds of wall time, not minutes, and every policy sees the same
seeded latency sequence. The real crucible-local sampler (tiny model, greedy, 8
tokens) is measured in the same run with fewer requests: it shows the wrapper's
cost on a backend without stragglers (its p99 barely moves: there is no tail to cut).
Run: .venv/bin/python -m benchmarks.hedging_bench [--requests 6000] [--clients 16]
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from crucible_hedging import (
    Adaptive,
    FixedDelay,
    HedgedBackend,
    HedgePolicy,
    Percentile,
    percentile,
)

from crucible_core.ir import Capabilities, Completion, Health, Prompt, SamplingParams, StreamChunk


class HeavyTail:
    """Sleeps a seeded heavy-tailed latency per call: lognormal body, 2 % stragglers at 10x."""

    def __init__(self, median_s: float, seed: int) -> None:
        self.median = median_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.calls = 0

    def latency(self) -> float:
        with self.lock:
            self.calls += 1
            body = self.median * self.rng.lognormvariate(0.0, 0.3)
            return body * 10 if self.rng.random() < 0.02 else body

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        time.sleep(self.latency())
        return Completion(text="ok", backend_id="sim")

    def capabilities(self) -> Capabilities:
        return Capabilities(backend_id="sim")

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        yield StreamChunk(text="ok", finish_reason="stop")

    def health_check(self) -> Health:
        return Health(ok=True)

    def metrics(self) -> Mapping[str, float]:
        return {}

    def close(self) -> None:
        pass


def run(call: Callable[[], Any], requests: int, clients: int) -> list[float]:
    """Per-request latencies (s) of ``requests`` calls from ``clients`` threads."""

    def one(_: int) -> float:
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(requests)))


def max_window_share(hedged: HedgedBackend) -> float:
    hedges, primaries = hedged.budget.in_window()
    return hedges / primaries if primaries else 0.0


def row(name: str, lat: list[float], base: list[float] | None, extra: float, share: str) -> str:
    p50, p99, p999 = (percentile(lat, p) * 1000 for p in (50, 99, 99.9))
    if base is None:
        cut = "-"
    else:
        b99, b999 = percentile(base, 99) * 1000, percentile(base, 99.9) * 1000
        cut = f"{1 - p99 / b99:6.1%} {1 - p999 / b999:6.1%}"
    return f"{name:22} {p50:7.1f} {p99:7.1f} {p999:8.1f}  {cut:>14}  {extra:6.2%}  {share}"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--median-ms", type=float, default=10.0)
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--local-requests", type=int, default=200)
    args = ap.parse_args()
    prompt, params = Prompt(text="hi"), SamplingParams(max_tokens=8, temperature=0.0)
    median = args.median_ms / 1000
    print(
        f"simulated: {args.requests} requests, {args.clients} clients, lognormal median "
        f"{args.median_ms:g} ms sigma 0.3, 2 % stragglers at 10x; budget {args.budget:.0%}"
    )
    print(
        f"{'policy':22} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8}  {'cut p99 p99.9':>14}  "
        f"{'extra':>6}  max share in a window"
    )
    base_backend = HeavyTail(median, seed=1)
    base = run(lambda: base_backend.complete(prompt, params), args.requests, args.clients)
    print(row("no hedging", base, None, 0.0, "-"))
    policies: list[tuple[str, Callable[[], HedgePolicy]]] = [
        ("fixed at base p95", lambda: FixedDelay(delay_ms=percentile(base, 95) * 1000)),
        ("percentile p95", lambda: Percentile(p=95)),
        ("percentile p97", lambda: Percentile(p=97)),
        ("adaptive", lambda: Adaptive(seed=3)),
    ]
    for name, make in policies:
        sim = HeavyTail(median, seed=1)
        hedged = HedgedBackend(sim, make(), budget=args.budget, window=1000)
        lat = run(lambda h=hedged: h.complete(prompt, params), args.requests, args.clients)
        m = hedged.metrics()
        extra = m["hedges_fired"] / m["requests"]
        fired, denied = m["hedges_fired"], m["hedges_denied"]
        share = f"{max_window_share(hedged):.2%} (fired {fired:.0f}, denied {denied:.0f})"
        print(row(name, lat, base, extra, share))

    import crucible_core

    local = crucible_core.get_backend("local")
    local.complete(prompt, params)  # load the model outside the measurement
    n = args.local_requests
    print(f"\ncrucible-local sampler (tiny model, greedy, 8 tokens): {n} requests, 1 client")
    base_local = run(lambda: local.complete(prompt, params), n, 1)
    print(row("local, no hedging", base_local, None, 0.0, "-"))
    hedged_local = HedgedBackend(local, Percentile(p=95), budget=args.budget)
    lat_local = run(lambda: hedged_local.complete(prompt, params), n, 1)
    m = hedged_local.metrics()
    print(
        row(
            "local, percentile p95",
            lat_local,
            base_local,
            m["hedges_fired"] / m["requests"],
            f"{max_window_share(hedged_local):.2%}",
        )
    )
    local.close()


if __name__ == "__main__":
    main()

"""Routing: adaptive vs round-robin vs always-primary on three simulated backends.

Target (issue 21): adaptive best, or within 5 % of the best, on every axis its
objective weighs: p99 latency, caller-visible error rate, cost per 1k requests.

The three members are ``crucible_router.simulated.SimulatedBackend``s on one
injected clock (latency advances the clock, nothing sleeps), each with its own
seeded RNG, so every strategy sees the same profiles and the run is exact and
reproducible:

- ``fast``   (the configured primary): median 80 ms, sigma 0.3, 2 % stragglers
  at 8x, 12 % errors, $3 per million tokens;
- ``steady``: median 150 ms, sigma 0.2, 0.5 % stragglers at 4x, 1 % errors, $1;
- ``cheap``:  median 400 ms, sigma 0.5, 3 % stragglers at 5x, 3 % errors, $0.2.

Every answer uses 200 prompt + 100 completion tokens. Two regimes: one attempt
per request (``max_attempts = 1``: the routing decision alone; an error reaches
the caller) and full fail-over (the rest of the route after the pick; the
caller sees an error only when every member fails, and the failed attempts'
time in the latency). Failed attempts cost nothing. The router's own cost per
request (wall time, with a zero-latency member) is printed too.

Run: .venv/bin/python -m benchmarks.router_bench [--requests 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import Any

from crucible_router import RoutedBackend
from crucible_router.policies import AdaptivePolicy, PrimaryFirst, RoundRobin
from crucible_router.simulated import FakeClock, SimulatedBackend

from crucible_core.ir import Prompt, SamplingParams

PROFILES: dict[str, dict[str, float]] = {
    "fast": {"latency_s": 0.08, "sigma": 0.3, "tail_p": 0.02, "tail_x": 8.0,
             "error_rate": 0.12, "price": 3.0},
    "steady": {"latency_s": 0.15, "sigma": 0.2, "tail_p": 0.005, "tail_x": 4.0,
               "error_rate": 0.01, "price": 1.0},
    "cheap": {"latency_s": 0.40, "sigma": 0.5, "tail_p": 0.03, "tail_x": 5.0,
              "error_rate": 0.03, "price": 0.2},
}  # fmt: skip

P = Prompt(text="What is the capital of France?")
PARAMS = SamplingParams(max_tokens=100, temperature=0.0)


def members(clock: FakeClock, seed: int) -> list[SimulatedBackend]:
    out = []
    for i, (name, p) in enumerate(PROFILES.items()):
        out.append(
            SimulatedBackend(
                name,
                clock,
                latency_s=p["latency_s"],
                sigma=p["sigma"],
                tail_p=p["tail_p"],
                tail_x=p["tail_x"],
                error_rate=p["error_rate"],
                prompt_per_mtok=p["price"],
                sample_per_mtok=p["price"],
                prompt_tokens=200,
                completion_tokens=100,
                seed=seed * 100 + i,
            )
        )
    return out


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(policy: Any, *, requests: int, seed: int, attempts: int | None) -> dict[str, Any]:
    clock = FakeClock()
    ms = members(clock, seed)
    prices = {m.name: PROFILES[m.name]["price"] for m in ms}
    router = RoutedBackend(ms[0], ms[1:], clock=clock, policy=policy, max_attempts=attempts)
    latencies: list[float] = []
    errors = 0
    cost = 0.0
    share: dict[str, int] = dict.fromkeys(prices, 0)
    for _ in range(requests):
        start = clock()
        try:
            out = router.complete(P, PARAMS)
        except Exception:
            errors += 1
        else:
            share[out.backend_id] += 1
            tokens = out.usage.prompt_tokens + out.usage.completion_tokens
            cost += tokens * prices[out.backend_id] / 1e6
        latencies.append(clock() - start)
    return {
        "p50_ms": quantile(latencies, 0.50) * 1000,
        "p99_ms": quantile(latencies, 0.99) * 1000,
        "error_rate": errors / requests,
        "errors": errors,
        "cost_per_1k": cost / requests * 1000,
        "share": {k: v / requests for k, v in share.items()},
    }


STRATEGIES: dict[str, Callable[[int], Any]] = {
    "always-primary": lambda seed: PrimaryFirst(),
    "round-robin": lambda seed: RoundRobin(),
    "adaptive (lat+err)": lambda seed: AdaptivePolicy(latency=1.0, errors=1.0, seed=seed),
    "adaptive (balanced)": lambda seed: AdaptivePolicy(
        latency=1.0, errors=1.0, cost=0.2, seed=seed
    ),
    "adaptive (cost-first)": lambda seed: AdaptivePolicy(
        latency=0.1, errors=1.0, cost=10.0, seed=seed
    ),
}


def table(results: Mapping[str, dict[str, Any]]) -> str:
    best = {k: min(r[k] for r in results.values()) for k in ("p99_ms", "error_rate", "cost_per_1k")}
    lines = [
        f"{'strategy':<24}{'p50 ms':>8}{'p99 ms':>9}{'errors':>14}{'$/1k req':>10}"
        "  share fast/steady/cheap",
    ]
    for name, r in results.items():
        share = "/".join(f"{r['share'][k]:.0%}" for k in PROFILES)
        lines.append(
            f"{name:<24}{r['p50_ms']:>8.0f}{r['p99_ms']:>9.0f}"
            f"{r['error_rate']:>8.2%} ({r['errors']:>4})"
            f"{r['cost_per_1k']:>10.3f}  {share}"
        )
    lines.append(
        f"{'best':<24}{'':>8}{best['p99_ms']:>9.0f}{best['error_rate']:>8.2%}{'':>6}"
        f"{best['cost_per_1k']:>10.3f}"
    )
    return "\n".join(lines)


BASELINES = ("always-primary", "round-robin")


def gaps(results: Mapping[str, dict[str, Any]], name: str) -> str:
    """How far ``name`` is from the best of itself and the baselines on each axis (0 %: it
    is the best). Error counts are printed too: a few errors in 20k are noise."""
    pool = [results[n] for n in (*BASELINES, name)]
    out = []
    for key, label in (("p99_ms", "p99"), ("error_rate", "errors"), ("cost_per_1k", "cost")):
        best = min(r[key] for r in pool)
        mine = results[name][key]
        gap = (mine - best) / best if best > 0 else (0.0 if mine == 0 else float("inf"))
        out.append(f"{label} +{gap:.0%}")
    return f"{name} vs the baselines: " + ", ".join(out)


def overhead_us(policy: Any, n: int = 2000, repeat: int = 5) -> float:
    """Wall microseconds per routed request over members that answer at once, minus a
    direct call (best of ``repeat``, interleaved)."""
    clock = FakeClock()
    ms = members(clock, 0)
    for m in ms:
        m.latency_s, m.error_rate, m.tail_p = 0.0, 0.0, 0.0
    router = RoutedBackend(ms[0], ms[1:], clock=clock, policy=policy)
    direct = ms[0]
    params = SamplingParams(max_tokens=4, temperature=0.0)
    base = routed = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            direct.complete(P, params)
        base = min(base, time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(n):
            router.complete(P, params)
        routed = min(routed, time.perf_counter() - start)
    return (routed - base) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for title, attempts in (("one attempt per request", 1), ("with fail-over", None)):
        results = {
            name: run(make(args.seed), requests=args.requests, seed=args.seed, attempts=attempts)
            for name, make in STRATEGIES.items()
        }
        print(f"\n== {title} ({args.requests} requests, seed {args.seed})")
        print(table(results))
        for name in results:
            if name.startswith("adaptive"):
                print("  " + gaps(results, name))
    print("\nrouter overhead per request (wall, members answer at once):")
    for name, make in STRATEGIES.items():
        print(f"  {name:<24}{overhead_us(make(0)):>8.1f} us")


if __name__ == "__main__":
    main()

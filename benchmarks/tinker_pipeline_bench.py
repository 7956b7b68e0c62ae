"""Pipelined vs naive training loops through the Tinker-compatible server, and its overhead.

One process starts the Tinker-compatible server over crucible-local on
127.0.0.1 and trains one LoRA model through the ``tinker`` backend (the real
tinker SDK over HTTP). Part 1 injects ``--latency-ms`` (default 50 ms) into
every HTTP request and times, in alternating rounds on the same session:

- naive: ``forward_backward(...).result()``, then ``optim_step(...).result()``;
- pipelined: step k+1's ``forward_backward`` and ``optim_step`` are submitted
  before step k's results are read (``--window`` steps in flight, default 2,
  as ``crucible train`` does).

Part 2 removes the injected latency and times the same two loops through the
server against the same loops on a crucible-local session in this process
(same model, LoRA layers, batches): the difference per step is what the
server path (SDK, HTTP, protobuf, futures, ordering) adds.

    .venv/bin/python -m benchmarks.tinker_pipeline_bench
    .venv/bin/python -m benchmarks.tinker_pipeline_bench --latency-ms 100 --steps 30 --json
"""

# The plugins are editable installs (setuptools import hooks), which pyright cannot follow
# from outside their directories; the imports are checked where the plugin is type-checked.

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    p.add_argument("--latency-ms", type=float, default=50.0, help="injected per request")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per loop")
    p.add_argument("--window", type=int, default=2, help="steps in flight when pipelined")
    p.add_argument("--batch", type=int, default=4, help="datums per step")
    p.add_argument("--seq", type=int, default=64, help="tokens per datum")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def _batch(vocab: int, batch: int, seq: int, seed: int) -> list[Any]:
    from crucible_core.ir.backend import Datum, LossFnInputs

    rng = random.Random(seed)
    out = []
    for _ in range(batch):
        ids = [rng.randrange(0, min(vocab, 256)) for _ in range(seq + 1)]
        out.append(
            Datum(
                model_input=ids[:-1],
                loss_fn_inputs=LossFnInputs(target_tokens=ids[1:], weights=[1.0] * seq),
            )
        )
    return out


def naive(session: Any, batch: Sequence[Any], steps: int) -> None:
    """Submit and wait: every call's result is read before the next call is made."""
    from crucible_core.ir.backend import AdamParams
    from crucible_core.ir.training import Loss

    loss, params = Loss(), AdamParams(learning_rate=1e-3)
    for _ in range(steps):
        session.forward_backward(batch, loss).result(600)
        session.optim_step(params).result(600)


def pipelined(session: Any, batch: Sequence[Any], steps: int, window: int) -> None:
    """Step k+1 is submitted before step k's results are read (``window`` steps in flight)."""
    from crucible_core.ir.backend import AdamParams
    from crucible_core.ir.training import Loss

    loss, params = Loss(), AdamParams(learning_rate=1e-3)
    pending: deque[tuple[Any, Any]] = deque()
    for _ in range(steps):
        pending.append((session.forward_backward(batch, loss), session.optim_step(params)))
        if len(pending) >= window:
            fb, opt = pending.popleft()
            fb.result(600)
            opt.result(600)
    while pending:
        fb, opt = pending.popleft()
        fb.result(600)
        opt.result(600)


def _rounds(arms: dict[str, Callable[[], None]], rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each arm, one sample per round, arms alternating."""
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            start = time.perf_counter()
            arms[name]()
            samples[name].append((time.perf_counter() - start) / steps)
    return samples


def _summary(seconds: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(seconds) * 1000,
        "best_ms": min(seconds) * 1000,
        "steps_per_s": 1 / statistics.median(seconds),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    import warnings

    warnings.simplefilter("ignore")  # a benchmark reports figures, not library warnings
    from crucible_tinker.backend import TinkerBackend
    from crucible_tinker.server import FaultConfig, TinkerServer

    import crucible_core
    from crucible_core.ir.training import DatasetSpec, LearningConfig, LoRA, ModelSpec, TrainingJob

    home = tempfile.mkdtemp(prefix="tinker-bench-")
    job = TrainingJob(
        backend="tinker",
        model_spec=ModelSpec(name=args.model),
        # Every attention and MLP linear layer: the same layers on Tinker and crucible-local.
        adapter_config=LoRA(
            rank=args.rank, target_modules=["all-linear"], dropout=0.0, train_unembed=False
        ),
        learning_config=LearningConfig(seed=0),
        dataset_spec=DatasetSpec(uri="memory:bench"),
    )
    latency = args.latency_ms / 1000
    server = TinkerServer("local", backend_options={"home": home}, long_poll_s=10.0).start()
    backend = TinkerBackend(
        base_url=server.url,
        api_key=server.api_key,
        tokenizer_backend="local",
        tokenizer_backend_options={"home": home},
    )
    local = crucible_core.get_backend("local", home=home)
    try:
        tok = backend.get_tokenizer(job.model_spec)
        batch = _batch(tok.vocab_size, args.batch, args.seq, seed=0)
        remote = backend.create_session(job)
        in_process = local.create_session(job)
        for session in (remote, in_process):  # warm up: first calls build caches
            naive(session, batch, 3)

        # Part 1: injected latency, naive vs pipelined, same session, alternating rounds.
        server.set_faults(FaultConfig(latency_s=latency))
        part1 = _rounds(
            {
                "naive": lambda: naive(remote, batch, args.steps),
                "pipelined": lambda: pipelined(remote, batch, args.steps, args.window),
            },
            args.rounds,
            args.steps,
        )
        requests = server.fault_counts().get("requests", 0)

        # Part 2: no injected latency, through the server vs crucible-local in process.
        server.set_faults(FaultConfig())
        part2 = _rounds(
            {
                "server_naive": lambda: naive(remote, batch, args.steps),
                "local_naive": lambda: naive(in_process, batch, args.steps),
                "server_pipelined": lambda: pipelined(remote, batch, args.steps, args.window),
                "local_pipelined": lambda: pipelined(in_process, batch, args.steps, args.window),
            },
            args.rounds,
            args.steps,
        )
        remote.close()
        in_process.close()
    finally:
        backend.close()
        server.stop()
        close = getattr(local, "close", None)
        if callable(close):
            close()

    s1 = {k: _summary(v) for k, v in part1.items()}
    s2 = {k: _summary(v) for k, v in part2.items()}
    result = {
        "latency_ms": args.latency_ms,
        "steps": args.steps,
        "rounds": args.rounds,
        "window": args.window,
        "batch": f"{args.batch} x {args.seq} tokens",
        "requests_with_latency": requests,
        "part1": s1,
        "speedup_median": s1["naive"]["median_ms"] / s1["pipelined"]["median_ms"],
        "speedup_best": s1["naive"]["best_ms"] / s1["pipelined"]["best_ms"],
        "part2": s2,
        "server_overhead_ms_per_step_naive": s2["server_naive"]["median_ms"]
        - s2["local_naive"]["median_ms"],
        "server_overhead_ms_per_step_pipelined": s2["server_pipelined"]["median_ms"]
        - s2["local_pipelined"]["median_ms"],
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    w = sys.stdout.write
    w(f"Part 1: {args.latency_ms:.0f} ms injected per request, {result['batch']}, ")
    w(f"{args.rounds} rounds x {args.steps} steps\n")
    for name, s in s1.items():
        w(f"  {name:10} {s['median_ms']:8.1f} ms/step median  {s['best_ms']:8.1f} best  ")
        w(f"{s['steps_per_s']:6.2f} steps/s\n")
    w(f"  pipelined / naive steps/s: {result['speedup_median']:.2f}x median, ")
    w(f"{result['speedup_best']:.2f}x best\n\n")
    w("Part 2: no injected latency, through the server vs crucible-local in process\n")
    for name, s in s2.items():
        w(f"  {name:17} {s['median_ms']:8.1f} ms/step median  {s['best_ms']:8.1f} best\n")
    w(f"  server overhead per step: {result['server_overhead_ms_per_step_naive']:.1f} ms naive, ")
    w(f"{result['server_overhead_ms_per_step_pipelined']:.1f} ms pipelined\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

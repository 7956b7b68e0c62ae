"""RL steps/s with sampling overlapped with training vs strictly sequential, same run.

The job is examples/rl-local.toml (tiny-llama, LoRA, "answer with the number N",
4 prompts x 8 completions a step) run twice per round, differing only in
``rl.max_off_policy_steps``: 0 (strictly on-policy: each step's samples wait for
the step before) and 1 (the next step's samples are drawn while the current step
trains). Each run's steps/s is its steady state: steps 2..N over the time from
step 1's ``train.step`` event to ``train.end`` in its telemetry (data
preparation, the first step's set-up and the final save excluded).

Two settings: crucible-local in this process, and the ``tinker`` backend (the real
tinker SDK over HTTP) against the project's Tinker-compatible server over
crucible-local on 127.0.0.1 with ``--latency-ms`` (default 50 ms) injected into
every request. Arms alternate within rounds, so load drift on a shared machine
hits both.

    .venv/bin/python -m benchmarks.rl_bench
    .venv/bin/python -m benchmarks.rl_bench --steps 8 --rounds 3 --json
"""

# The plugins are editable installs (setuptools import hooks), which pyright cannot follow
# from outside their directories; the imports are checked where the plugin is type-checked.

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    p.add_argument("--latency-ms", type=float, default=50.0, help="injected per request")
    p.add_argument("--steps", type=int, default=8, help="RL steps per run")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting")
    p.add_argument("--skip-local", action="store_true", help="only the server setting")
    p.add_argument("--batch", type=int, default=None, help="prompts per step (example: 4)")
    p.add_argument("--group-size", type=int, default=None, help="completions per prompt (8)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per completion (4)")
    p.add_argument("--no-kl", action="store_true", help="rl.report_kl = false")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def _job(args: argparse.Namespace, off_policy: int, backend: str) -> Any:
    import msgspec

    from crucible_core.ir import TrainingJob, decode_file
    from crucible_core.ir.training import CheckpointPolicy

    job = decode_file(ROOT / "examples" / "rl-local.toml", TrainingJob)
    rl = msgspec.structs.replace(job.rl_config, max_off_policy_steps=off_policy)
    if args.group_size is not None:
        rl = msgspec.structs.replace(rl, group_size=args.group_size)
    if args.max_tokens is not None:
        rl = msgspec.structs.replace(rl, max_tokens=args.max_tokens)
    if args.no_kl:
        rl = msgspec.structs.replace(rl, report_kl=False)
    learning = msgspec.structs.replace(job.learning_config, max_steps=args.steps)
    if args.batch is not None:
        learning = msgspec.structs.replace(learning, batch_size=args.batch)
    return msgspec.structs.replace(
        job,
        backend=backend,
        rl=rl,
        learning_config=learning,
        checkpoint_policy=CheckpointPolicy(save_every=10_000, save_best=False, keep_last=1),
    )


def _steps_per_s(home: Path, run: str) -> float:
    """Steady-state steps/s: steps 2..N over the time from step 1's event to train.end
    (step 1 also opens the reference session and the first sampler)."""
    lines = (home / "runs" / run / "telemetry.jsonl").read_text().splitlines()
    events = [e for e in map(json.loads, lines) if e["kind"] in ("train.step", "train.end")]
    first, end = events[0], events[-1]
    return (int(end["step"]) - int(first["step"])) / (float(end["ts"]) - float(first["ts"]))


def _rounds(arms: dict[str, Callable[[int], float]], rounds: int) -> dict[str, list[float]]:
    """Steps/s of each arm, one sample per round, arms alternating order."""
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            samples[name].append(arms[name](r))
    return samples


def _summary(values: list[float]) -> dict[str, float]:
    return {"median_steps_per_s": statistics.median(values), "best_steps_per_s": max(values)}


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    import warnings

    warnings.simplefilter("ignore")  # a benchmark reports figures, not library warnings
    home = Path(tempfile.mkdtemp(prefix="rl-bench-"))
    os.environ["CRUCIBLE_HOME"] = str(home)
    os.environ.setdefault("CRUCIBLE_CALL_DEADLINE_S", "300")
    import torch
    from crucible_tinker.backend import TinkerBackend
    from crucible_tinker.server import FaultConfig, TinkerServer

    import crucible_core
    from crucible_core.train.run import run_training

    torch.set_num_threads(1)  # the shared 2-core machine: one thread per model worker
    results: dict[str, Any] = {
        "steps": args.steps,
        "rounds": args.rounds,
        "batch": args.batch or 4,
        "group_size": args.group_size or 8,
        "max_tokens": args.max_tokens or 4,
        "report_kl": not args.no_kl,
    }

    def arm(setting: str, off_policy: int, backend: Any) -> Callable[[int], float]:
        def run(r: int) -> float:
            run_id = f"{setting}-{off_policy}-{r}"
            name = "tinker" if setting == "server" else "local"
            run_training(_job(args, off_policy, name), job_id=run_id, backend=backend)
            return _steps_per_s(home, run_id)

        return run

    if not args.skip_local:
        local = crucible_core.get_backend("local", home=str(home / "local"))
        try:
            arm("local", 1, local)(-1)  # warm-up: model build, tokenizer, caches
            samples = _rounds(
                {"sequential": arm("local", 0, local), "overlapped": arm("local", 1, local)},
                args.rounds,
            )
        finally:
            close = getattr(local, "close", None)
            if callable(close):
                close()
        results["local"] = dict[str, Any]({k: _summary(v) for k, v in samples.items()})
        results["local"]["speedup"] = (
            results["local"]["overlapped"]["median_steps_per_s"]
            / results["local"]["sequential"]["median_steps_per_s"]
        )

    server = TinkerServer(
        "local", backend_options={"home": str(home / "server")}, long_poll_s=10.0
    ).start()
    backend = TinkerBackend(
        base_url=server.url,
        api_key=server.api_key,
        tokenizer_backend="local",
        tokenizer_backend_options={"home": str(home / "server")},
    )
    try:
        arm("server", 1, backend)(-1)  # warm-up without latency
        server.set_faults(FaultConfig(latency_s=args.latency_ms / 1000))
        samples = _rounds(
            {"sequential": arm("server", 0, backend), "overlapped": arm("server", 1, backend)},
            args.rounds,
        )
        requests = server.fault_counts().get("requests", 0)
    finally:
        backend.close()
        server.stop()
    results["server"] = dict[str, Any]({k: _summary(v) for k, v in samples.items()})
    results["server"]["speedup"] = (
        results["server"]["overlapped"]["median_steps_per_s"]
        / results["server"]["sequential"]["median_steps_per_s"]
    )
    results["server"]["latency_ms"] = args.latency_ms
    results["server"]["requests_with_latency"] = requests

    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    w = sys.stdout.write
    w(f"RL steps/s, examples/rl-local.toml, {args.steps} steps x {args.rounds} rounds, ")
    w(f"{results['batch']} prompts x {results['group_size']} completions x ")
    w(f"{results['max_tokens']} tokens, report_kl {results['report_kl']}\n")
    for setting in ("local", "server"):
        if setting not in results:
            continue
        r = results[setting]
        label = setting if setting == "local" else f"server (+{args.latency_ms:.0f} ms/request)"
        w(f"  {label}\n")
        for arm_name in ("sequential", "overlapped"):
            s = r[arm_name]
            w(f"    {arm_name:11} {s['median_steps_per_s']:6.2f} steps/s median  ")
            w(f"{s['best_steps_per_s']:6.2f} best\n")
        w(f"    overlapped / sequential: {r['speedup']:.2f}x\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

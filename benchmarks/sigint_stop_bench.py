"""How long Ctrl-C takes to stop `crucible train`: signal -> checkpoint saved -> process gone.

Runs the README's job (``examples/sft-local.toml``: tiny-llama, LoRA, the
local backend) as a real ``crucible train`` subprocess in a throw-away
``CRUCIBLE_HOME``, lets it train ``--warmup`` steps, sends SIGINT at a random
point inside a step, and reads the run's telemetry. Per trial it reports:

- the step time (median gap between ``train.step`` events before the signal);
- steps whose end was logged after the signal (the step being computed; the
  one queued behind it is withdrawn, crucible-local allows that);
- signal -> ``train.stopped`` (the stop checkpoint is written by then), in
  seconds and in step times;
- the checkpoint write (the stop checkpoint's event minus the last step's),
  and the time from the signal to the end of the last step, in step times
  (the target is "at most one step, plus the checkpoint write");
- signal -> process exit (adds the interpreter's shutdown).

It also checks the outcome: exit status 130, the run ``interrupted``, the
``crucible resume <id>`` line printed.

    .venv/bin/python -m benchmarks.sigint_stop_bench             # 5 trials
    .venv/bin/python -m benchmarks.sigint_stop_bench --trials 3 --json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--warmup", type=int, default=8, help="steps trained before the signal")
    p.add_argument("--seed", type=int, default=0, help="where in a step the signal lands")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p.parse_args(argv)


def _job(tmp: Path) -> Path:
    from crucible_core.ir import TrainingJob, decode_file, encode

    raw: dict[str, Any] = json.loads(
        encode(decode_file(ROOT / "examples" / "sft-local.toml", TrainingJob))
    )
    raw["learning_config"]["max_steps"] = 10_000  # never reached: the signal stops it
    raw["checkpoint_policy"]["save_every"] = 10_000  # the only checkpoint is the stop's
    raw["validation_spec"] = None
    raw["dataset_spec"]["uri"] = str(ROOT / "examples" / "data" / "chat.jsonl")
    path = tmp / "job.json"
    path.write_text(json.dumps(raw))
    return path


def _events(home: Path, run: str) -> list[dict[str, Any]]:
    path = home / "runs" / run / "telemetry.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trial(job: Path, home: Path, run: str, warmup: int, rng: random.Random) -> dict[str, Any]:
    env = {**os.environ, "CRUCIBLE_HOME": str(home)}
    argv = [sys.executable, "-m", "crucible_core.cli.main", "train", str(job), "--job-id", run]
    proc = subprocess.Popen(
        [*argv, "--no-progress"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    steps: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        steps = [e for e in _events(home, run) if e["kind"] == "train.step"]
        if len(steps) >= warmup:
            break
        if proc.poll() is not None:
            raise SystemExit(f"crucible train ended early: {proc.communicate()[1]}")
        time.sleep(0.01)
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(steps)]
    step_s = statistics.median(gaps)
    time.sleep(rng.uniform(0, step_s))  # land anywhere inside a step
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=600)
    exited = time.time()
    events = _events(home, run)
    stopped = next(e for e in events if e["kind"] == "train.stopped")
    after = [e for e in events if e["kind"] == "train.step" and e["ts"] > sent]
    last_step = max(e["ts"] for e in events if e["kind"] == "train.step")
    ckpt = max(e["ts"] for e in events if e["kind"] == "train.checkpoint")
    manifest = json.loads((home / "runs" / run / "manifest.json").read_text())
    ok = (
        proc.returncode == 130
        and manifest["status"] == "interrupted"
        and f"crucible resume {run}" in err
    )
    if not ok:
        raise SystemExit(f"unexpected outcome: rc={proc.returncode} {manifest['status']}\n{err}")
    stop_s = stopped["ts"] - sent
    return {
        "step_s": round(step_s, 4),
        "steps_after_signal": len(after),
        "signal_to_stopped_s": round(stop_s, 4),
        "signal_to_stopped_steps": round(stop_s / step_s, 2),
        "checkpoint_write_s": round(ckpt - last_step, 4),
        # The stop without the checkpoint write, in step times: the target is <= 1.
        "steps_before_checkpoint": round((last_step - sent) / step_s, 2),
        "signal_to_exit_s": round(exited - sent, 4),
    }


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    rng = random.Random(args.seed)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        job = _job(Path(tmp))
        for i in range(args.trials):
            results.append(trial(job, Path(tmp) / f"home{i}", f"sig{i}", args.warmup, rng))
    keys = list(results[0])
    summary = {
        k: {"median": statistics.median(r[k] for r in results), "max": max(r[k] for r in results)}
        for k in keys
    }
    if args.json:
        print(json.dumps({"trials": results, "summary": summary}))
        return 0
    print(f"{'':26}{'median':>10}{'max':>10}")
    for k in keys:
        print(f"{k:26}{summary[k]['median']:>10}{summary[k]['max']:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

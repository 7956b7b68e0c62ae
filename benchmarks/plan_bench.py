"""`crucible plan` over a 100k-row chat JSONL (rows and tokens counted with the run's tokenizer).

Target (issue 8): under 10 s on 2 cores, reported beside the time of one local
training step (the thing the plan is estimating) measured in the same run.
Run: .venv/bin/python -m benchmarks.plan_bench [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import msgspec

from crucible_core.ir import DatasetSpec, TrainingJob, decode_file
from crucible_core.train import loop as trainloop
from crucible_core.train.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]


def write_rows(path: Path, n: int) -> None:
    rng = random.Random(0)
    with path.open("w") as fh:
        for i in range(n):
            a, b = rng.randrange(100), rng.randrange(100)
            row = {
                "messages": [
                    {"role": "user", "content": f"What is {a} plus {b}? (#{i})"},
                    {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
                ]
            }
            fh.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    job = decode_file(ROOT / "examples" / "sft-local.toml", TrainingJob)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        write_rows(data, args.rows)
        job = msgspec.structs.replace(
            job, dataset_spec=msgspec.structs.replace(job.dataset_spec, uri=str(data))
        )
        make_plan(  # warm imports (torch, tokenizer) outside the timed region
            msgspec.structs.replace(
                job, dataset_spec=DatasetSpec(uri=str(ROOT / "examples/data/chat.jsonl"))
            ),
            measure=False,
        )
        start = time.perf_counter()
        plan = make_plan(job, measure=False)
        plan_s = time.perf_counter() - start
    assert plan.ok, plan.problems
    from crucible_core import get_backend

    backend = get_backend("local")
    session = backend.create_session(job)
    tok = backend.get_tokenizer(job.model_spec)
    from crucible_core.testing import make_datums

    batch = make_datums(tok, ["What is 1 plus 2? 1 plus 2 is 3."] * job.learning_config.batch_size)
    params = trainloop.adam_params(job.learning_config, 1e-3)
    session.forward_backward(batch, job.learning_config.loss).result()
    session.optim_step(params).result()
    steps = 5
    start = time.perf_counter()
    for _ in range(steps):
        session.forward_backward(batch, job.learning_config.loss).result()
        session.optim_step(params).result()
    step_s = (time.perf_counter() - start) / steps
    session.close()
    print(f"rows: {plan.rows} train + {plan.validation_rows} validation")
    print(f"tokens per epoch: {plan.tokens_per_epoch}, steps: {plan.steps}")
    print(f"plan (load + render + tokenize + estimate): {plan_s:6.2f} s  (target < 10 s)")
    print(f"one local training step (batch {job.learning_config.batch_size}): {step_s:6.3f} s")
    print(f"plan / step: {plan_s / step_s:.0f}x")
    print(f"target < 10 s: {'met' if plan_s < 10 else 'NOT met'}")


if __name__ == "__main__":
    main()

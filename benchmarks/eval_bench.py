"""`crucible eval` throughput vs a hand-written greedy generate loop, and per-cell overhead
of submitting an experiment grid to the queue.

Targets (issue 16): the harness evaluates at >= 0.9x the examples per second of the
plainest loop over the same sampler (what it adds: reading and hashing the dataset,
rendering, scoring each example, a 9,999-resample BCa bootstrap per metric); and
submitting a grid costs little per cell next to a training run.
Both sides use crucible-local's tiny-llama base weights, the same prompts and the
same max_tokens; runs alternate so load drift on a shared machine hits both alike.
Run: .venv/bin/python -m benchmarks.eval_bench [--n 24] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "examples" / "data" / "dates.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import os

    with tempfile.TemporaryDirectory() as home:
        os.environ["CRUCIBLE_HOME"] = home
        from crucible_datasets.loading import read_dataset
        from crucible_datasets.prompts import eval_prompts
        from crucible_datasets.render import get_renderer
        from crucible_harness.evaluate import Target, evaluate

        from crucible_core.ir import DatasetSpec, ModelSpec, Prompt, SamplingParams
        from crucible_core.ir.common import BackendRef
        from crucible_core.plugins import get_host
        from crucible_core.train.sampled_eval import _max_tokens  # pyright: ignore[reportPrivateUsage]

        model = ModelSpec(name="tiny-llama", max_seq_len=128)
        target = Target(label="bench", backend=BackendRef(name="local"), model=model,
                        checkpoint=None, template=None, run_dir=None)  # fmt: skip
        host = get_host()
        backend = host.create("backend", "local")
        tokenizer = backend.get_tokenizer(model)
        spec = DatasetSpec(uri=DATA)
        rows = read_dataset(spec).rows
        prompts = eval_prompts(rows, get_renderer(None, tokenizer), spec, limit=args.n,
                               max_length=model.max_seq_len)  # fmt: skip

        def hand_written() -> float:
            start = time.perf_counter()
            sampler = backend.load_sampler(model, None)
            for p in prompts:
                ref = len(tokenizer.encode(str(p["reference"])))
                params = SamplingParams(
                    max_tokens=_max_tokens(len(p["tokens"]), ref, model.max_seq_len),
                    temperature=0.0,
                )
                sampler.sample(Prompt(tokens=list(p["tokens"])), params).result(timeout=600)
            return time.perf_counter() - start

        def harness() -> float:
            start = time.perf_counter()
            evaluate(target, DATA, ["exact_match", "token_f1"], n=args.n, host=host, write=False)
            return time.perf_counter() - start

        hand_written()  # warm up: first model build, torch kernels
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(args.rounds):
            theirs.append(hand_written())
            ours.append(harness())
        best_ours, best_theirs = min(ours), min(theirs)

        # Scheduling overhead: submitting a 2x2 x 2 seeds grid (8 cells) to the queue.
        from crucible_harness.experiment import load, submit

        from crucible_core.queue.scheduler import Scheduler

        tmp = Path(home)
        base = (
            (ROOT / "examples" / "dates-local.toml")
            .read_text()
            .replace('"examples/data/dates.jsonl"', json.dumps(DATA))
        )
        (tmp / "base.toml").write_text(base)
        grid = (
            'id = "bench"\nseeds = [0, 1]\nmetadata = { job = "base.toml" }\n'
            '[parameter_grid]\n"learning_config.optimizer.lr" = [1e-3, 5e-3]\n'
            '"learning_config.batch_size" = [8, 16]\n'
        )
        (tmp / "grid.toml").write_text(grid)
        start = time.perf_counter()
        loaded = load(tmp / "grid.toml")
        sched = Scheduler()
        try:
            submit(loaded, sched)
            first = time.perf_counter() - start
            start = time.perf_counter()
            submit(load(tmp / "grid.toml"), sched)  # a re-run: nothing new
            again = time.perf_counter() - start
        finally:
            sched.close()
    cells = len(loaded.cells)
    print(
        json.dumps(
            {
                "examples": len(prompts),
                "hand_written_s": round(best_theirs, 3),
                "crucible_eval_s": round(best_ours, 3),
                "throughput_ratio": round(best_theirs / best_ours, 3),
                "target_ratio": 0.9,
                "grid_cells": cells,
                "submit_ms_per_cell": round(first / cells * 1000, 2),
                "resubmit_ms_per_cell": round(again / cells * 1000, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

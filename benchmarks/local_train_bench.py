"""Time per training step: `crucible train`'s loop and crucible-local's session vs raw torch + PEFT.

Both loops train the same model (a built-in tiny model, LoRA on every linear
layer of the attention and MLP blocks, AdamW, gradient clipping at 1.0) on the
same random token batches, in the same process, in alternating rounds so that
machine noise hits both alike. The session is driven through the contract
only (``forward_backward`` + ``optim_step`` futures, pipelined the way a
training loop submits them); the raw loop is what one would write by hand.
Prints wall-clock and CPU time per step of each, their ratios (the session's
orchestration overhead) and the process's peak RSS.

    .venv/bin/python -m benchmarks.local_train_bench            # defaults below
    .venv/bin/python -m benchmarks.local_train_bench --threads 2 --hidden 256 --layers 4
    .venv/bin/python -m benchmarks.local_train_bench --json     # one JSON object on stdout

A third arm runs the loop ``crucible train`` uses (``crucible_core.train.loop.train``:
pipelined submission, learning-rate schedule, checkpoint policy, budgets,
watchdog) with every event going through the event bus to a telemetry file,
so its ratio to the raw loop is the whole per-step orchestration overhead of
``crucible train`` (model building and data loading happen once per run and
are not per-step costs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    p.add_argument("--model", default="tiny-llama", choices=["tiny-llama", "tiny-gpt2"])
    p.add_argument("--hidden", type=int, default=64, help="hidden size (default: built-in)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128, help="tokens per example")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=9, help="alternating rounds per loop")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: the backend's choice, 1 for built-in models)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    import torch
    import torch.nn.functional as F
    from crucible_local.adapters import lora_targets
    from crucible_local.backend import LocalBackend
    from crucible_local.models import load_model
    from peft import LoraConfig, get_peft_model

    from crucible_core.ir.backend import AdamParams, Datum, LossFnInputs
    from crucible_core.ir.training import (
        AdamW,
        DatasetSpec,
        LearningConfig,
        LoRA,
        Loss,
        ModelSpec,
        TrainingJob,
    )

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    spec = ModelSpec(
        name=args.model,
        options={
            "hidden_size": args.hidden,
            "intermediate_size": 2 * args.hidden,
            "num_layers": args.layers,
        },
    )
    lora = LoRA(rank=args.rank, alpha=2.0 * args.rank, dropout=0.0, target_modules=["all-linear"])
    lr = 1e-3
    gen = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, 256, (args.batch, args.seq + 1), generator=gen) for _ in range(args.steps)
    ]
    datums = [
        [
            Datum(
                model_input=row[:-1].tolist(),
                loss_fn_inputs=LossFnInputs(target_tokens=row[1:].tolist()),
            )
            for row in batch
        ]
        for batch in batches
    ]

    # -- the session, through the contract -------------------------------------------------
    home = tempfile.mkdtemp(prefix="crucible-bench-")
    backend = LocalBackend(home=home, num_threads=args.threads)
    job = TrainingJob(
        model_spec=spec,
        dataset_spec=DatasetSpec(uri="bench:random"),
        adapter_config=lora,
        learning_config=LearningConfig(optimizer=AdamW(lr=lr, grad_clip=1.0), max_steps=10**6),
    )
    session = backend.create_session(job)
    loss = Loss()
    params = AdamParams(learning_rate=lr)

    def session_round() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        futures = []
        for batch in datums:
            futures.append(session.forward_backward(batch, loss))
            futures.append(session.optim_step(params))
        for f in futures:
            f.result()
        n = len(datums)
        return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n

    # -- the loop `crucible train` runs, with events to telemetry -----------------------------
    from crucible_core.ir.training import CheckpointPolicy
    from crucible_core.records.events import EventBus
    from crucible_core.train import loop as trainloop

    os.environ["CRUCIBLE_HOME"] = home
    flat = [d for batch in datums for d in batch]
    loop_job = TrainingJob(
        job_id="bench-loop",
        model_spec=spec,
        dataset_spec=DatasetSpec(uri="bench:random", shuffle=False),
        adapter_config=lora,
        learning_config=LearningConfig(
            optimizer=AdamW(lr=lr, grad_clip=1.0), batch_size=args.batch, max_steps=args.steps
        ),
        checkpoint_policy=CheckpointPolicy(save_every=10**6, save_best=False),
    )
    loop_session = backend.create_session(loop_job)
    bus = EventBus()

    def emit(event: str, /, **fields: Any) -> None:
        step = fields.pop("step", None)
        epoch = fields.pop("epoch", None)
        bus.emit(event, job_id="bench-loop", step=step, epoch=epoch, **fields)

    def loop_round() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        trainloop.train(loop_session, loop_job, flat, emit=emit)
        n = args.steps
        return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n

    # -- the same model by hand: transformers + peft + torch ---------------------------------
    loaded = load_model(spec)
    targets = lora_targets(loaded, lora)
    with warnings.catch_warnings():
        # peft reads transformers 5's deprecated `is_gradient_checkpointing` on every build.
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        model: Any = get_peft_model(
            loaded.model,
            LoraConfig(
                r=args.rank,
                lora_alpha=2 * args.rank,
                lora_dropout=0.0,
                target_modules=targets,
                fan_in_fan_out=args.model == "tiny-gpt2",
                task_type="CAUSAL_LM",
            ),
        )
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)

    def raw_round() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
            loss_value = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
            )
            loss_value.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        n = len(batches)
        return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n

    session_round()  # warm-up: first calls allocate and compile kernels
    raw_round()
    loop_round()
    session_times: list[tuple[float, float]] = []
    raw_times: list[tuple[float, float]] = []
    loop_times: list[tuple[float, float]] = []
    arms = {raw_round: raw_times, session_round: session_times, loop_round: loop_times}
    for i in range(args.rounds):
        # Rotate which loop goes first so drifts in machine load hit all alike.
        order = list(arms)[i % 3 :] + list(arms)[: i % 3]
        for fn in order:
            arms[fn].append(fn())
    session.close()
    loop_session.close()
    bus.close()
    backend.close()

    # Wall time: best round of each (as timeit does): on a shared machine other work only
    # ever adds time, so the fastest round is the closest to each loop's own cost.
    # CPU time of the process (every thread) per step, best round: what each loop costs
    # whatever else runs on the machine; the fairest figure when cores are shared.
    raw_ms = min(w for w, _ in raw_times) * 1000
    session_ms = min(w for w, _ in session_times) * 1000
    raw_cpu = min(c for _, c in raw_times) * 1000
    session_cpu = min(c for _, c in session_times) * 1000
    raw_median = statistics.median(w for w, _ in raw_times) * 1000
    session_median = statistics.median(w for w, _ in session_times) * 1000
    loop_ms = min(w for w, _ in loop_times) * 1000
    loop_cpu = min(c for _, c in loop_times) * 1000
    loop_median = statistics.median(w for w, _ in loop_times) * 1000
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "model": args.model,
        "hidden": args.hidden,
        "layers": args.layers,
        "batch": args.batch,
        "seq": args.seq,
        "lora_rank": args.rank,
        "torch_threads": torch.get_num_threads(),
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "raw_ms_per_step": round(raw_ms, 2),
        "session_ms_per_step": round(session_ms, 2),
        "overhead_ratio": round(session_ms / raw_ms, 3),
        "raw_ms_per_step_median": round(raw_median, 2),
        "session_ms_per_step_median": round(session_median, 2),
        "overhead_ratio_median": round(session_median / raw_median, 3),
        "raw_cpu_ms_per_step": round(raw_cpu, 2),
        "session_cpu_ms_per_step": round(session_cpu, 2),
        "overhead_ratio_cpu": round(session_cpu / raw_cpu, 3),
        "train_loop_ms_per_step": round(loop_ms, 2),
        "train_loop_ms_per_step_median": round(loop_median, 2),
        "train_loop_cpu_ms_per_step": round(loop_cpu, 2),
        "train_loop_overhead_ratio": round(loop_ms / raw_ms, 3),
        "train_loop_overhead_ratio_median": round(loop_median / raw_median, 3),
        "train_loop_overhead_ratio_cpu": round(loop_cpu / raw_cpu, 3),
        "peak_rss_mb": round(rss_mb, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.model} hidden={args.hidden} layers={args.layers} batch={args.batch}x{args.seq} "
            f"LoRA r={args.rank} all-linear, torch threads={result['torch_threads']}"
        )
        print(f"{'':22}  wall best  wall median    CPU best   (ms/step, {args.rounds} rounds)")
        print(f"raw torch + PEFT loop : {raw_ms:9.2f} {raw_median:12.2f} {raw_cpu:11.2f}")
        print(
            f"crucible-local session: {session_ms:9.2f} {session_median:12.2f} {session_cpu:11.2f}"
        )
        print(f"crucible train loop   : {loop_ms:9.2f} {loop_median:12.2f} {loop_cpu:11.2f}")
        ratios = (session_ms / raw_ms, session_median / raw_median, session_cpu / raw_cpu)
        print(
            f"ratio session/raw     : {ratios[0]:9.3f} {ratios[1]:12.3f} {ratios[2]:11.3f}"
            "   (target <= 1.10)"
        )
        lr_ = (loop_ms / raw_ms, loop_median / raw_median, loop_cpu / raw_cpu)
        print(
            f"ratio train loop/raw  : {lr_[0]:9.3f} {lr_[1]:12.3f} {lr_[2]:11.3f}"
            "   (target <= 1.10)"
        )
        print(f"peak RSS              : {rss_mb:8.1f} MB")
        print(f"load average (1 min)  : {result['load_average_1m']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The training loop's own cost per step, measured against a backend that answers instantly.

Timing a tiny model's step on a shared 2-core machine swings 20-50 % between
runs (see local_train_bench.py), which hides a small overhead. Here the
session does no work and returns finished futures, so what remains is the
loop's own bookkeeping: batches, the learning-rate schedule, the checkpoint
policy, budgets, the watchdog and a ``train.step`` event to the telemetry
file. Baseline in the same run: the bare loop one would write by hand
(submit forward_backward and optim_step, read the loss).
Run: .venv/bin/python -m benchmarks.trainloop_overhead_bench
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from crucible_core.ir import (
    AdamParams,
    CheckpointPolicy,
    CheckpointRef,
    DatasetSpec,
    Datum,
    ForwardBackwardResult,
    LearningConfig,
    Loss,
    LossFnInputs,
    ModelSpec,
    OptimStepResult,
    TrainingJob,
)
from crucible_core.train import loop as trainloop

STEPS = 2000


def _done(value: Any) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_result(value)
    return f


class InstantSession:
    """A session whose every call is already finished: only the caller's work is timed."""

    def __init__(self) -> None:
        self.step = 0
        self.tokenizer: Any = None

    def forward_backward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        n = sum(len(d.model_input) for d in batch)
        return _done(ForwardBackwardResult(loss=1.0, num_tokens=n))

    forward = forward_backward

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        self.step += 1
        return _done(OptimStepResult(step=self.step, learning_rate=params.learning_rate))

    def save_state(self, name: str) -> Future[CheckpointRef]:
        return _done(CheckpointRef(uri=f"mem://{name}", step=self.step))

    def close(self) -> None:
        pass


def main() -> None:
    os.environ["CRUCIBLE_HOME"] = tempfile.mkdtemp(prefix="crucible-bench-")
    data = [
        Datum(
            model_input=list(range(128)),
            loss_fn_inputs=LossFnInputs(target_tokens=list(range(128))),
        )
        for _ in range(64)
    ]
    job = TrainingJob(
        job_id="bench",
        model_spec=ModelSpec(name="none"),
        dataset_spec=DatasetSpec(uri="bench"),
        learning_config=LearningConfig(batch_size=4, max_steps=STEPS),
        checkpoint_policy=CheckpointPolicy(save_every=10**9, save_best=False),
    )
    from crucible_core.records.events import EventBus

    bus = EventBus()

    def emit(event: str, /, **fields: Any) -> None:
        step, epoch = fields.pop("step", None), fields.pop("epoch", None)
        bus.emit(event, job_id="bench", step=step, epoch=epoch, **fields)

    def bare() -> float:
        session = InstantSession()
        start = time.perf_counter()
        for step in range(STEPS):
            batch = data[(step * 4) % 64 : (step * 4) % 64 + 4]
            fb = session.forward_backward(batch, job.learning_config.loss)
            session.optim_step(AdamParams(learning_rate=1e-4)).result()
            fb.result()
        return (time.perf_counter() - start) / STEPS

    def loop(with_events: bool) -> float:
        session: Any = InstantSession()
        start = time.perf_counter()
        trainloop.train(session, job, data, emit=emit if with_events else None)
        return (time.perf_counter() - start) / STEPS

    bare()
    loop(True)
    t_bare = min(bare() for _ in range(5))
    t_quiet = min(loop(False) for _ in range(5))
    t_loop = min(loop(True) for _ in range(5))
    bus.close()
    print(f"bare submit/read loop:          {t_bare * 1e6:7.1f} us/step")
    print(f"crucible loop, no events:       {t_quiet * 1e6:7.1f} us/step")
    print(f"crucible loop, events to JSONL: {t_loop * 1e6:7.1f} us/step")
    added = (t_loop - t_bare) * 1e3
    print(
        f"added by the loop: {added:.3f} ms/step; against a 22 ms tiny-model step: {added / 22:.1%}"
    )


if __name__ == "__main__":
    main()

"""Job functions the worker tests submit as ``custom`` jobs (importable by worker processes).

Each takes the job context first, as the worker calls ``func(ctx, **args)``.
They touch marker files so a test can see, across processes, what ran.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from crucible_core.errors import CapacityError
from crucible_core.ir.backend import CheckpointRef


def echo(ctx: Any, **args: Any) -> dict[str, Any]:
    return {"args": args, "attempt": ctx.attempt}


def mark(ctx: Any, *, directory: str) -> int:
    """Append this job's id to <directory>/<pid>.log: one line per execution."""
    with open(Path(directory) / f"{os.getpid()}.log", "a") as fh:
        fh.write(ctx.job_id + "\n")
    return os.getpid()


def fail_then_succeed(ctx: Any, *, failures: int) -> str:
    if ctx.attempt <= failures:
        raise CapacityError(f"busy on attempt {ctx.attempt}")
    return "ok"


def boom(ctx: Any) -> None:
    raise ValueError("boom")


def until_cancelled(ctx: Any, *, limit_s: float = 20.0) -> str:
    deadline = time.monotonic() + limit_s
    while not ctx.cancel.is_set():
        if time.monotonic() > deadline:
            return "never cancelled"
        time.sleep(0.01)
    return f"stopped: {ctx.cancel.reason}"


def stepper(ctx: Any, *, steps: int, step_s: float, directory: str) -> dict[str, Any]:
    """A resumable 'training' loop: a checkpoint per step, resumed from ctx.resume_from.

    Each executed step is logged to <directory>/steps.log as "<pid> <step>".
    """
    start = ctx.resume_from.step if ctx.resume_from is not None else 0
    log = Path(directory) / "steps.log"
    for step in range(start + 1, steps + 1):
        if ctx.cancel.is_set():
            raise RuntimeError(f"stopped at step {step}")
        time.sleep(step_s)
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {step}\n")
        ctx.emit("train.step", step=step, loss=1.0 / step)
        ctx.record_checkpoint(CheckpointRef(uri=f"mem://{ctx.job_id}/{step}", step=step))
    return {"resumed_from": start, "steps": steps}


def checkpoint_then_fail(ctx: Any) -> Any:
    if ctx.resume_from is None:
        ctx.record_checkpoint(CheckpointRef(uri="mem://first", step=7))
        raise CapacityError("fail after saving")
    return {"resumed_at": ctx.resume_from.step, "uri": ctx.resume_from.uri}


def unstorable(ctx: Any) -> Any:
    return object()


def slow_to_stop(ctx: Any, *, directory: str, stop_s: float, limit_s: float = 20.0) -> str:
    """Runs until told to stop, then takes ``stop_s`` to wind down (saving state, say).

    Appends "<attempt> <start> <end> <pid>" (wall-clock seconds) to
    <directory>/attempts.log when it returns, so a test can check that no two
    attempts ran at once, across threads and processes.
    """
    start = time.time()
    deadline = time.monotonic() + limit_s
    while not ctx.cancel.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(stop_s)
    end = time.time()
    with open(Path(directory) / "attempts.log", "a") as fh:
        fh.write(f"{ctx.attempt} {start!r} {end!r} {os.getpid()}\n")
    return f"stopped: {ctx.cancel.reason}"


def deaf(ctx: Any, *, directory: str, limit_s: float = 30.0) -> str:
    """Ignores every stop request, logging "<pid> <time>" to alive.log every 20 ms.

    Only the first process to run it is deaf: in any other it logs once and
    returns, so a test sees when (and in which process) the job ran again.
    """
    deadline = time.monotonic() + limit_s
    log = Path(directory) / "alive.log"
    while time.monotonic() < deadline:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {time.time()!r}\n")
        if log.read_text().split(maxsplit=1)[0] != str(os.getpid()):
            return "run again elsewhere"
        time.sleep(0.02)
    return "never stopped"

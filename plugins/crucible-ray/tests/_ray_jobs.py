"""Job bodies the tests enqueue (``custom`` jobs): Ray workers import them by module name.

The conftest puts this directory on ``PYTHONPATH`` before Ray starts, so
every Ray worker process can import ``_ray_jobs``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def _wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.02)
    return False


def add(ctx: Any, a: int, b: int) -> int:
    return a + b


def assigned(ctx: Any) -> dict[str, float]:
    """The resources Ray gave this task."""
    import ray

    return dict(ray.get_runtime_context().get_assigned_resources())


def chatty(ctx: Any, gate: str) -> str:
    """Emit an event, then wait until the test (which saw it on the driver's bus) opens the gate."""
    ctx.emit("probe.tick", step=1, pid=os.getpid())
    if not _wait_for(Path(gate), 30.0):
        raise TimeoutError(
            "the gate never opened: the event did not reach the driver while running"
        )
    ctx.emit("probe.tock", step=2)
    return "streamed"


def store(ctx: Any, text: str) -> dict[str, Any]:
    """Write a file on the node and put it in the artifact store; where it was done."""
    out = ctx.run_dir / "note.txt"
    out.write_text(text)
    return {
        "sha256": ctx.artifacts.put(out, type="file", name="note").sha256,
        "pid": os.getpid(),
        "home": os.environ.get("CRUCIBLE_HOME"),
    }


def pid_then_wait(ctx: Any, pids: str, ledger: str) -> str:
    """Record this process's pid; on attempt 1 wait to be killed; else finish once."""
    with open(pids, "a") as f:
        f.write(f"{ctx.attempt} {os.getpid()}\n")
    if ctx.attempt == 1:
        time.sleep(120)
    with open(ledger, "a") as f:
        f.write(f"done on attempt {ctx.attempt}\n")
    return "survived"


def sleeper(ctx: Any, pids: str) -> None:
    Path(pids).write_text(str(os.getpid()))
    time.sleep(120)


def sleep_pid(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def dates_job(repo: str, seed: int, steps: int = 3) -> dict[str, Any]:
    """examples/dates-local.toml cut to ``steps`` steps, as a training_run payload."""
    import msgspec

    from crucible_core.ir import TrainingJob, decode_file

    base = decode_file(Path(repo) / "examples" / "dates-local.toml", TrainingJob)
    job = msgspec.structs.replace(
        base,
        learning_config=msgspec.structs.replace(
            base.learning_config, max_steps=steps, batch_size=4, seed=seed
        ),
        dataset_spec=msgspec.structs.replace(
            base.dataset_spec, uri=str(Path(repo) / "examples" / "data" / "dates.jsonl")
        ),
        validation_spec=None,
    )
    return msgspec.to_builtins(job)

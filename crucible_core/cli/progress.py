"""A rich progress bar fed by the event bus (the CLI's view of a running job).

Subscribe it to an :class:`~crucible_core.records.events.EventBus`; it reads
``train.start`` (``total_steps``), ``train.step`` (step, ``loss``),
``stage.start``/``stage.end`` and ``job.state`` and shows, per job, a bar
with step/total and the last loss. It runs on the bus's delivery thread, so
drawing never slows the training loop, and rich is imported only when a
progress bar is actually made.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from crucible_core.records.events import Event

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ["ProgressSubscriber"]


class ProgressSubscriber:
    """Callable subscriber drawing one rich progress task per job.

    ``total`` is used until a ``train.start`` event says otherwise. Call
    :meth:`close` (or use it as a context manager) to stop drawing.
    """

    def __init__(self, *, console: Console | None = None, total: int | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._default_total = total
        self._progress: Progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()
        self._progress.start()

    def _task(self, job_id: str) -> TaskID:
        task = self._tasks.get(job_id)
        if task is None:
            task = self._progress.add_task(job_id, total=self._default_total, loss="-")
            self._tasks[job_id] = task
        return task

    def __call__(self, event: Event) -> None:
        with self._lock:
            task = self._task(event.job_id)
            data = event.data
            if event.kind == "train.start":
                total = data.get("total_steps")
                if isinstance(total, int):
                    self._progress.update(task, total=total)
            elif event.kind == "train.step":
                update: dict[str, Any] = {}
                if event.step is not None:
                    update["completed"] = event.step
                loss = data.get("loss")
                if isinstance(loss, int | float):
                    update["loss"] = f"{loss:.4f}"
                self._progress.update(task, **update)
            elif event.kind == "stage.start":
                self._progress.update(task, description=f"{event.job_id} {data.get('stage', '')}")
            elif event.kind == "job.state":
                status = data.get("status", "")
                self._progress.update(task, description=f"{event.job_id} [{status}]")

    def close(self) -> None:
        """Stop the live display (leaves the last frame on screen)."""
        self._progress.stop()

    def __enter__(self) -> ProgressSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""crucible-mlflow's one hook: every runtime event goes to the MLflow sink.

Kept light: the sink is built on the first event, and ``mlflow`` is imported
on the sink's worker thread, never on the bus's delivery thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crucible_core import hookimpl

if TYPE_CHECKING:
    from crucible_core.records.events import Event


@hookimpl
def on_event(event: Event) -> None:
    from crucible_mlflow.sink import deliver

    deliver(event)

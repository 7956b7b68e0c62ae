"""crucible-otel's one hook: every runtime event goes to the OpenTelemetry sink.

Kept light: the sink (and opentelemetry) is imported on the first event, not
when the plugin host loads this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crucible_core import hookimpl

if TYPE_CHECKING:
    from crucible_core.records.events import Event


@hookimpl
def on_event(event: Event) -> None:
    from crucible_otel.sink import deliver

    deliver(event)

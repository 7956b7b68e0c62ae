"""crucible-openlineage's hook: ``on_event`` feeds the process's lineage sink.

Kept light: the sink, the transports and ``openlineage`` are imported when
the first event arrives, not when the plugin is loaded.
"""

from __future__ import annotations

from typing import Any

from crucible_core import hookimpl


@hookimpl
def on_event(event: Any) -> None:
    from crucible_openlineage.runtime import observe

    observe(event)

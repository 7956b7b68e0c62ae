"""The process's one lineage sink, made from the environment on the first event.

:func:`observe` is what the ``on_event`` hook calls. The sink is built from
:class:`~crucible_openlineage.config.SinkConfig.from_env` once per process
(``CRUCIBLE_OPENLINEAGE_TRANSPORT=none`` turns it off). A configuration
error is logged once, with its hint, and the sink stays off: lineage never
fails a run. At exit the sink is closed within ``flush_s`` seconds.
:func:`reset` closes it and forgets it (tests, or a process that changes
its configuration).
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

from crucible_core.errors import CrucibleError
from crucible_openlineage.config import SinkConfig, make_transport
from crucible_openlineage.sink import LineageSink

__all__ = ["current", "observe", "reset"]

log = logging.getLogger("crucible.openlineage")

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _make() -> tuple[LineageSink | None, float]:
    try:
        config = SinkConfig.from_env()
        send = make_transport(config)
    except CrucibleError as exc:
        log.error("OpenLineage sink is off: %s (%s)", exc.message, exc.hint or "")
        return None, 0.0
    if send is None:
        return None, 0.0
    sink = LineageSink(send, namespace=config.namespace, queue_size=config.queue_size)
    return sink, config.flush_s


def current() -> LineageSink | None:
    """The process's sink (built on first use; None when off)."""
    with _lock:
        if _state.get("exiting"):
            return None  # events delivered while the process exits start no new sink
        if "sink" not in _state:
            sink, flush_s = _make()
            _state["sink"] = sink
            _state["flush_s"] = flush_s
            if not _state.get("atexit"):
                atexit.register(_at_exit)
                _state["atexit"] = True
        return _state["sink"]


def observe(event: Any) -> None:
    """Hand one crucible event to the sink (if lineage is on)."""
    sink = current()
    if sink is not None:
        sink.observe(event)


def reset() -> LineageSink | None:
    """Close the current sink (ABORT open runs, flush within ``flush_s``) and forget it."""
    with _lock:
        sink = _state.pop("sink", None)
        flush_s = float(_state.pop("flush_s", 0.0))
    if sink is not None:
        sink.close(flush_s)
    return sink


def _at_exit() -> None:
    with _lock:
        _state["exiting"] = True
    reset()

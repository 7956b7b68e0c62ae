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

import logging

from crucible_core.errors import CrucibleError
from crucible_core.records.sinkslot import SinkSlot
from crucible_openlineage.config import SinkConfig, make_transport
from crucible_openlineage.sink import LineageSink

__all__ = ["current", "observe", "reset"]

log = logging.getLogger("crucible.openlineage")


def _make() -> LineageSink | None:
    try:
        config = SinkConfig.from_env()
        send = make_transport(config)
    except CrucibleError as exc:
        log.error("OpenLineage sink is off: %s (%s)", exc.message, exc.hint or "")
        return None
    if send is None:
        return None
    sink = LineageSink(send, namespace=config.namespace, queue_size=config.queue_size)
    _flush_s[sink] = config.flush_s
    return sink


_flush_s: dict[LineageSink, float] = {}


def _close(sink: LineageSink, timeout: float | None) -> None:
    flush_s = _flush_s.pop(sink, 0.0)
    sink.close(flush_s if timeout is None else timeout)


_slot: SinkSlot[LineageSink] = SinkSlot(_make, _close, LineageSink.observe)


def current() -> LineageSink | None:
    """The process's sink (built on first use; None when off)."""
    return _slot.get()


#: ``observe(event)``: hand one crucible event to the sink (if lineage is on).
observe = _slot.deliver


def reset() -> LineageSink | None:
    """Close the current sink (ABORT open runs, flush within ``flush_s``) and forget it."""
    return _slot.reset()

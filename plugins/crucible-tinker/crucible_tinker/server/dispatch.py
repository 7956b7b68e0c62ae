"""Each training model's two worker threads, which apply its operations in ``seq_id`` order.

HTTP handlers run on the server's event loop and never block on a model: they
:func:`enqueue` an :class:`Op` on the model's
:class:`~crucible_tinker.server.ordering.OrderedQueue` and answer with the
future's request id. A model's *dispatcher* takes operations in ``seq_id``
order and submits them to the crucible session (which applies them in
submission order and returns futures, so dispatch does not wait for compute);
its *completer* waits on those futures in the same order and resolves the
tinker futures. Duplicate submissions (the SDK retrying) get the first
submission's request id.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from crucible_core.contracts import TrainingSession
from crucible_core.errors import ConfigError, CrucibleError, NotFound
from crucible_tinker.server.errors import Gone
from crucible_tinker.server.futures import Entry, FutureStore, Payload
from crucible_tinker.server.ordering import OrderedQueue, StaleSequence

__all__ = ["Model", "Op", "Submit", "classify", "close_model", "enqueue", "start_workers"]

log = logging.getLogger("crucible_tinker.server")

#: Operations that create the model's session: when one fails, the model is unusable.
CREATING = frozenset({"create_model", "create_from_state"})


@dataclass
class Op:
    """One operation of a model: its kind, ``seq_id``, tinker future and submitter."""

    kind: str
    seq_id: int
    entry: Entry
    submit: Submit


@dataclass
class Model:
    """A training model: its crucible session, the queue of its operations and workers."""

    model_id: str
    session_id: str
    model_seq_id: int
    base_model: str
    lora: dict[str, Any]
    queue: OrderedQueue[Op] = field(default_factory=lambda: OrderedQueue[Op](first_seq=0))
    session: TrainingSession | None = None
    error: str | None = None
    done: queue.Queue[tuple[Op, Callable[[], Payload]] | None] = field(
        default_factory=lambda: queue.Queue[tuple[Op, Callable[[], Payload]] | None]()
    )
    threads: list[threading.Thread] = field(default_factory=list[threading.Thread])


#: Submits one operation to the model's session; returns how to finish it (wait for the
#: session's future and build the answer), or None when it is already finished.
Submit = Callable[[Model], Callable[[], Payload] | None]


def classify(exc: BaseException) -> tuple[str, Literal["user", "server"]]:
    """An exception as (message, tinker error category)."""
    if isinstance(exc, CrucibleError):
        category: Literal["user", "server"] = (
            "user" if isinstance(exc, ConfigError | NotFound) else "server"
        )
        return str(exc), category
    if isinstance(exc, ValueError | TypeError | KeyError):
        return f"{type(exc).__name__}: {exc}", "user"
    return f"{type(exc).__name__}: {exc}", "server"


def start_workers(model: Model) -> None:
    """Start the model's dispatcher and completer (daemon threads, joined on close)."""
    for target, name in ((_dispatch_loop, "dispatch"), (_complete_loop, "complete")):
        t = threading.Thread(
            target=target, args=(model,), name=f"tinker-{name}-{model.model_id}", daemon=True
        )
        model.threads.append(t)
        t.start()


def close_model(model: Model, reason: str) -> None:
    """Fail the model's operations not yet run, stop its workers, close its session."""
    for op in model.queue.close():
        op.entry.fail(f"{reason}; operation {op.kind} seq {op.seq_id} was not run", "server")
    if model.session is not None:
        try:
            model.session.close()
        except Exception:
            log.warning("closing the session of model %s failed", model.model_id, exc_info=True)


def enqueue(
    model: Model,
    seq_id: int,
    kind: str,
    submit: Submit,
    futures: FutureStore,
    stats: dict[str, int],
) -> dict[str, Any]:
    """Queue operation ``seq_id`` of ``model``; the answer names its future's request id
    (the first one's, when the SDK submits the same ``seq_id`` again)."""
    if seq_id < 1:
        raise ConfigError(f"seq_id must be >= 1 for {kind}, got {seq_id}")
    known = model.queue.seen(seq_id)
    if known is not None:
        stats["duplicate_submissions"] += 1
        return {"request_id": known, "model_id": model.model_id}
    entry = futures.create(kind)
    try:
        offer = model.queue.offer(seq_id, entry.request_id, Op(kind, seq_id, entry, submit))
    except StaleSequence as exc:
        raise ConfigError(str(exc)) from None
    except RuntimeError:
        raise Gone(f"model {model.model_id!r} is closed") from None
    if not offer.accepted:
        stats["duplicate_submissions"] += 1
        entry.fail("duplicate submission", "user")
    elif offer.out_of_order:
        stats["out_of_order_arrivals"] += 1
    return {"request_id": offer.request_id, "model_id": model.model_id}


def _dispatch_loop(model: Model) -> None:
    while True:
        op = model.queue.take()
        if op is None:
            break
        if model.error is not None and op.kind != "create_model":
            op.entry.fail(f"model {model.model_id} is unusable: {model.error}", "server")
            continue
        log.debug("dispatch %s seq %d (%s)", model.model_id, op.seq_id, op.kind)
        try:
            finish = op.submit(model)
        except BaseException as exc:
            message, category = classify(exc)
            if op.kind in CREATING:
                model.error = message
            op.entry.fail(message, category)
            continue
        if finish is not None:
            model.done.put((op, finish))
    model.done.put(None)


def _complete_loop(model: Model) -> None:
    while True:
        item = model.done.get()
        if item is None:
            break
        op, finish = item
        try:
            op.entry.resolve(finish())
            log.debug("completed %s seq %d (%s)", model.model_id, op.seq_id, op.kind)
        except BaseException as exc:
            message, category = classify(exc)
            op.entry.fail(message, category)

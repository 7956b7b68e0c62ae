"""Sessions a recipe puts in front of the backend's, and the futures they return.

DPO without a backend ``dpo`` loss (:mod:`.preference`), distillation's
teacher metrics (:mod:`.distill`) and on-policy distillation (:mod:`.onpolicy`)
each change what ``forward``/``forward_backward`` do and nothing else; a
:class:`WrappedSession` passes every other call of the
:class:`~crucible_core.contracts.TrainingSession` contract to the session it
wraps, so a wrapper states only what it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from crucible_core.contracts import Future, Sampler, Tokenizer, TrainingSession
from crucible_core.ir.backend import (
    AdamParams,
    CheckpointRef,
    Datum,
    ForwardBackwardResult,
    OptimStepResult,
)
from crucible_core.ir.training import Loss

__all__ = ["Done", "Mapped", "WrappedSession"]

T = TypeVar("T")
U = TypeVar("U")


class Mapped(Generic[T, U]):
    """A future whose result is ``fn`` of another future's."""

    def __init__(self, inner: Future[T], fn: Callable[[T], U]) -> None:
        self._inner = inner
        self._fn = fn

    def result(self, timeout: float | None = None) -> U:
        return self._fn(self._inner.result(timeout=timeout))

    def done(self) -> bool:
        return self._inner.done()


class Done(Generic[T]):
    """A future that already holds its result."""

    def __init__(self, value: T) -> None:
        self._value = value

    def result(self, timeout: float | None = None) -> T:
        return self._value

    def done(self) -> bool:
        return True


class WrappedSession:
    """A :class:`~crucible_core.contracts.TrainingSession` passing every call to ``inner``.

    Subclasses override ``forward``/``forward_backward``. Their futures are not
    the inner session's, so the loop must not withdraw them
    (``withdraws_queued_calls = False``).
    """

    withdraws_queued_calls = False

    def __init__(self, inner: TrainingSession) -> None:
        self._inner = inner

    @property
    def tokenizer(self) -> Tokenizer:
        return self._inner.tokenizer

    @property
    def step(self) -> int:
        return self._inner.step

    def forward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        return self._inner.forward(batch, loss)

    def forward_backward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        return self._inner.forward_backward(batch, loss)

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        return self._inner.optim_step(params)

    def save_state(self, name: str) -> Future[CheckpointRef]:
        return self._inner.save_state(name)

    def load_state(self, ref: CheckpointRef) -> Future[None]:
        return self._inner.load_state(ref)

    def save_weights_for_sampler(self, name: str) -> Future[Sampler]:
        return self._inner.save_weights_for_sampler(name)

    def delete_checkpoint(self, ref: CheckpointRef) -> None:
        self._inner.delete_checkpoint(ref)

    def close(self) -> None:
        self._inner.close()

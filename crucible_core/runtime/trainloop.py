"""The training loop over the training contract, pipelined, resumable and budgeted.

:func:`train` drives any :class:`~crucible_core.contracts.TrainingSession`:
it submits step k+1's ``forward_backward`` and ``optim_step`` before it reads
step k's results (at most ``window`` steps in flight), because a remote
backend works on a clock and a naive loop waits a cycle per step. Calls are
applied by the backend in submission order, so a ``save_state`` submitted
right after step k's ``optim_step`` saves exactly the state after step k even
while later steps are queued.

Exact resume: batches are a pure function of ``(seed, step)`` (each epoch is
a seeded permutation), so a run restarted from the checkpoint of step k with
the same data feeds step k+1 the batch an uninterrupted run would have; the
backend restores weights, optimizer and RNG state (the conformance kit checks
``load_state``). The loop's own state (step, tokens, cost, elapsed time, the
checkpoints kept) is a :class:`LoopState` saved beside every checkpoint.

Budgets are checked before a step is submitted, so a run stops *before* it
would exceed ``max_tokens``/``max_cost``; ``max_wall_time`` stops when the
next step would, at the measured pace, pass the limit. A stop drains the
pipeline, saves a state checkpoint, and raises
:class:`~crucible_core.errors.BudgetExhausted`; cancellation does the same at
the next step boundary and raises :class:`~crucible_core.errors.Cancelled`
(``reason`` in its details: the cancel token's reason, ``interrupted`` for a
signal). No step is submitted after the flag is seen. A session that sets
``withdraws_queued_calls = True`` (its futures are ``concurrent.futures``
futures of one first-in-first-out worker, so cancelling a call that has not
started means it never runs, as crucible-local's do) gets the flag polled
while the loop waits, and the steps queued behind the one being computed are
withdrawn: the run stops within one step plus the checkpoint write. Other
sessions finish the steps already submitted (at most ``window``).

A non-finite loss (nan/inf) stops the run with
:class:`~crucible_core.errors.Diverged`. The checkpoints saved from the step
whose weights produced it onwards (in flight or recorded) are discarded when
the loop still knows the state of an earlier checkpoint, so what is left to
resume from is the last good checkpoint.
Every wait on the backend has a deadline: a call that exceeds it raises
:class:`~crucible_core.errors.DeadlineExceeded` naming the backend, the call
and how long it waited (never a silent hang).
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

from crucible_core.contracts import CancelToken, Future, TrainingSession
from crucible_core.errors import (
    BackendError,
    BudgetExhausted,
    Cancelled,
    ConfigError,
    DeadlineExceeded,
    Diverged,
)
from crucible_core.ir.backend import (
    AdamParams,
    CheckpointRef,
    Costs,
    Datum,
    ForwardBackwardResult,
    OptimStepResult,
)
from crucible_core.ir.training import SGD, AdamW, LearningConfig, TrainingJob
from crucible_core.runtime.cancel import reason_of
from crucible_core.runtime.checkpoints import CheckpointTracker

__all__ = [
    "DEFAULT_DEADLINE_S",
    "Emit",
    "LoopResult",
    "LoopState",
    "SavedCheckpoint",
    "adam_params",
    "batch_for_step",
    "learning_rate",
    "total_steps",
    "train",
]

#: How long one backend call may take before the watchdog reports it.
DEFAULT_DEADLINE_S = 600.0


class Emit(Protocol):
    """Where the loop reports events (``train.step``, ``train.checkpoint``, ...)."""

    def __call__(self, event: str, /, **data: Any) -> None: ...


def _quiet(event: str, /, **data: Any) -> None:
    """The default Emit: report nothing."""


class SavedCheckpoint(msgspec.Struct, kw_only=True):
    """A state checkpoint the loop saved, with the metric it was judged by."""

    ref: CheckpointRef
    step: int
    metric: float | None = None


class LoopState(msgspec.Struct, kw_only=True):
    """The loop's own resumable state, saved beside each checkpoint."""

    step: int = 0
    tokens: int = 0
    cost: float = 0.0
    elapsed_s: float = 0.0
    first_loss: float | None = None
    last_loss: float | None = None
    checkpoints: list[SavedCheckpoint] = []
    val_history: list[float] = []


class LoopResult(msgspec.Struct, kw_only=True):
    """What a finished (or stopped) loop reports."""

    state: LoopState
    total_steps: int
    losses: list[float]
    best: SavedCheckpoint | None = None
    last: SavedCheckpoint | None = None
    stopped: str | None = None  # "budget:max_tokens", "early_stopping", "cancelled", ...


def _snapshot(state: LoopState) -> LoopState:
    return msgspec.structs.replace(
        state, checkpoints=list(state.checkpoints), val_history=list(state.val_history)
    )


def batches_per_epoch(n_datums: int, batch_size: int) -> int:
    """Batches in one pass over ``n_datums`` (the last one may be short)."""
    return max(1, math.ceil(n_datums / batch_size))


def total_steps(config: LearningConfig, n_datums: int) -> int:
    """Optimizer steps of a run: ``max_steps``, capped by ``epochs`` when both are set."""
    if n_datums <= 0:
        raise ConfigError("the training set is empty", hint="check dataset_spec and its filters")
    per_step = config.grad_accum
    by_epochs = None
    if config.epochs is not None:
        by_epochs = max(
            1, config.epochs * batches_per_epoch(n_datums, config.batch_size) // per_step
        )
    if config.max_steps is None:
        assert by_epochs is not None  # LearningConfig refuses neither being set
        return by_epochs
    return config.max_steps if by_epochs is None else min(config.max_steps, by_epochs)


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    # Cached: every batch of an epoch reads the same order, and shuffling a large
    # dataset per batch would cost more than the step on a small model.
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


def batch_for_step(
    datums: Sequence[Datum], step: int, micro: int, config: LearningConfig, *, shuffle: bool = True
) -> tuple[list[Datum], float]:
    """The micro-batch ``micro`` of optimizer step ``step`` (0-based) and the epoch it ends in.

    A pure function of its arguments: this is what makes resume exact.
    """
    bpe = batches_per_epoch(len(datums), config.batch_size)
    index = step * config.grad_accum + micro
    epoch, k = divmod(index, bpe)
    start, stop = k * config.batch_size, (k + 1) * config.batch_size
    chosen = (
        _permutation(len(datums), config.seed, epoch)[start:stop]
        if shuffle
        else range(start, min(stop, len(datums)))
    )
    return [datums[i] for i in chosen], (index + 1) / bpe


def learning_rate(config: LearningConfig, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): warmup, then the schedule."""
    return config.optimizer.lr * config.scheduler.multiplier(step, total)


def adam_params(config: LearningConfig, lr: float) -> AdamParams:
    """The optimizer-step parameters for ``lr`` (SGD's momentum travels as ``beta1``)."""
    opt = config.optimizer
    if isinstance(opt, AdamW):
        return AdamParams(
            learning_rate=lr,
            beta1=opt.betas[0],
            beta2=opt.betas[1],
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            grad_clip_norm=opt.grad_clip or 0.0,
        )
    assert isinstance(opt, SGD)
    return AdamParams(
        learning_rate=lr,
        beta1=opt.momentum,
        weight_decay=opt.weight_decay,
        grad_clip_norm=opt.grad_clip or 0.0,
    )


def _tokens(batch: Sequence[Datum]) -> int:
    return sum(len(d.model_input) for d in batch)


class _Watchdog:
    """Waits on futures with a deadline and reports who was slow."""

    def __init__(self, backend: str, deadline_s: float) -> None:
        self.backend = backend
        self.deadline_s = deadline_s

    def wait(self, future: Future[Any], call: str, tick: Callable[[], None] | None = None) -> Any:
        """``future``'s result; with ``tick``, called every 10 ms while it is not ready."""
        start = time.monotonic()
        try:
            if tick is None:
                return future.result(timeout=self.deadline_s)
            while True:
                left = self.deadline_s - (time.monotonic() - start)
                if left <= 0:
                    raise TimeoutError
                try:
                    return future.result(timeout=min(0.01, left))
                except TimeoutError:
                    if time.monotonic() - start >= self.deadline_s:
                        raise
                    tick()
        except TimeoutError as exc:
            waited = time.monotonic() - start
            raise DeadlineExceeded(
                f"backend {self.backend!r}: {call} did not answer within {waited:.1f} s",
                hint="the backend may be overloaded or unreachable; raise the deadline with "
                "CRUCIBLE_CALL_DEADLINE_S or check the backend's health",
                backend=self.backend,
                call=call,
                waited_s=round(waited, 3),
                request_id=getattr(exc, "request_id", None) or getattr(future, "request_id", None),
            ) from exc


class _InFlight(msgspec.Struct):
    step: int
    epoch: float
    fb: list[Future[ForwardBackwardResult]]
    opt: Future[OptimStepResult]
    lr: float
    submitted: float
    save: Future[CheckpointRef] | None = None
    val: Future[ForwardBackwardResult] | None = None
    tokens: int = 0

    def calls(self) -> list[Any]:
        """Its futures in submission order."""
        return [*self.fb, self.opt, *(f for f in (self.save, self.val) if f is not None)]


def _mean_loss(results: Sequence[ForwardBackwardResult]) -> float:
    tokens = sum(r.num_tokens for r in results)
    if tokens > 0:
        return sum(r.loss * r.num_tokens for r in results) / tokens
    return sum(r.loss for r in results) / len(results)


def train(
    session: TrainingSession,
    job: TrainingJob,
    train_data: Sequence[Datum],
    *,
    validation_data: Sequence[Datum] = (),
    emit: Emit | None = None,
    cancel: CancelToken | None = None,
    resume: LoopState | None = None,
    on_checkpoint: Callable[[SavedCheckpoint, LoopState], None] | None = None,
    on_delete: Callable[[SavedCheckpoint], None] | None = None,
    costs: Costs | None = None,
    backend_name: str = "backend",
    window: int = 2,
    deadline_s: float = DEFAULT_DEADLINE_S,
    clock: Callable[[], float] = time.monotonic,
) -> LoopResult:
    """Run the job's optimizer steps on ``session``; see the module docstring for the rules.

    ``on_checkpoint`` is called after each state checkpoint (with the loop
    state to persist beside it); ``on_delete`` when the checkpoint policy
    retires one. ``resume`` continues a run from the state saved with its
    last checkpoint (the caller has already ``load_state``-d the session).
    """
    cfg = job.learning_config
    policy = job.checkpoint_policy
    loss = cfg.loss
    total = total_steps(cfg, len(train_data))
    shuffle = job.dataset_spec.shuffle
    budget = job.budget
    price = (costs.train_per_mtok if costs else 0.0) / 1e6
    say: Emit = emit or _quiet
    watch = _Watchdog(backend_name, deadline_s)
    state = msgspec.structs.replace(resume) if resume is not None else LoopState()
    state.checkpoints = list(state.checkpoints)
    tracker = CheckpointTracker(policy, saved=[(c.step, c.metric) for c in state.checkpoints])
    val_spec = job.validation_spec
    # A metric-driven save ("best") needs step k's loss before step k+1 runs.
    window = 1 if policy.strategy == "best" else max(1, window)
    losses: list[float] = []
    pending: deque[_InFlight] = deque()
    session_start = clock()
    # The loop state of each checkpoint this process knows, to roll back to after a divergence.
    known: dict[int, LoopState] = {}
    if resume is not None and state.checkpoints:
        known[state.checkpoints[-1].step] = _snapshot(state)
    step_times: deque[float] = deque(maxlen=8)
    stopped: str | None = None
    patience_left = val_spec.early_stopping_patience if val_spec else None
    best_val = min(state.val_history) if state.val_history else None

    def elapsed() -> float:
        # Wall time of the whole run, across resumes.
        return (resume.elapsed_s if resume else 0.0) + (clock() - session_start)

    def diverged(item: _InFlight, step_loss: float) -> None:
        # Weights after step k-1 produced step k's bad loss: checkpoints from k-1 on are
        # suspect. Saves still in flight are waited for and deleted (never recorded).
        k = item.step + 1
        discarded: list[SavedCheckpoint] = []
        for it in [item, *pending]:
            if it.save is not None:
                ref = watch.wait(it.save, "save_state")
                discarded.append(SavedCheckpoint(ref=ref, step=it.step + 1))
        pending.clear()
        suspect = [c for c in state.checkpoints if c.step >= k - 1]
        good = [c for c in state.checkpoints if c.step < k - 1]
        if suspect and good and good[-1].step in known:
            back = _snapshot(known[good[-1].step])
            back.checkpoints = [c for c in back.checkpoints if c in good]
            if on_checkpoint is not None:
                on_checkpoint(good[-1], back)
            state.checkpoints = good
            discarded.extend(suspect)
        for c in discarded:
            if on_delete is not None:
                on_delete(c)
        last = state.checkpoints[-1].step if state.checkpoints else None
        say("train.stopped", step=k, reason="non_finite_loss", loss=step_loss)
        raise Diverged(
            f"step {k}: the loss is {step_loss} (not finite); training stopped"
            + (
                f", the last good checkpoint (step {last}) is kept"
                if last is not None and last < k - 1
                else f"; the newest checkpoint (step {last}) may hold the diverged weights"
                if last is not None
                else ", no checkpoint was saved before it"
            ),
            hint="lower learning_config.optimizer.lr, or set optimizer.grad_clip, and train "
            "again (or resume from the kept checkpoint with `crucible resume "
            f"{job.job_id or 'RUN'}`)",
            step=k,
            loss=str(step_loss),
            last_checkpoint=last,
        )

    withdrawable = cancel is not None and getattr(session, "withdraws_queued_calls", False) is True

    def withdraw_queued() -> None:
        # Cancelled: take back the steps queued behind the one being computed, newest
        # first. One FIFO worker: if a step's first call has not started, none of its
        # calls has, so cancelling them all leaves the session exactly as it was.
        if cancel is None or not cancel.is_set():
            return
        while pending:
            item = pending[-1]
            calls = item.calls()
            if not calls[0].cancel():
                return
            if not all(f.cancel() for f in calls[1:]):
                raise BackendError(
                    f"backend {backend_name!r}: a queued call ran before the call queued "
                    "ahead of it, though the session sets withdraws_queued_calls",
                    hint="the session must run its calls one at a time, in submission order",
                )
            pending.pop()
            state.tokens -= item.tokens
            state.cost -= item.tokens * price

    tick = withdraw_queued if withdrawable else None

    def finish_oldest() -> None:
        nonlocal stopped, patience_left, best_val
        item = pending.popleft()
        results = [watch.wait(f, "forward_backward", tick) for f in item.fb]
        opt = watch.wait(item.opt, "optim_step", tick)
        step_loss = _mean_loss(results)
        if not math.isfinite(step_loss):
            diverged(item, step_loss)
        now = clock()
        step_times.append(now - item.submitted)
        state.step = item.step + 1
        state.last_loss = step_loss
        if state.first_loss is None:
            state.first_loss = step_loss
        losses.append(step_loss)
        metrics: dict[str, float] = {}
        for r in results:
            metrics.update(r.metrics)
        metrics.update(opt.metrics)
        say(
            "train.step",
            step=state.step,
            epoch=item.epoch,
            loss=step_loss,
            lr=item.lr,
            tokens=state.tokens,
            grad_norm=opt.grad_norm,
            total_steps=total,
            metrics=metrics,
        )
        observed: dict[str, float] = {"loss": step_loss, **metrics}
        if item.val is not None:
            val = watch.wait(item.val, "forward")
            observed["val_loss"] = val.loss
            state.val_history.append(val.loss)
            say("eval.metric", step=state.step, split="validation", val_loss=val.loss)
            if patience_left is not None:
                if best_val is None or val.loss < best_val:
                    best_val = val.loss
                    patience_left = val_spec.early_stopping_patience if val_spec else None
                else:
                    patience_left -= 1
                    if patience_left <= 0:
                        stopped = "early_stopping"
        decision = tracker.observe(state.step, item.epoch, observed, final=state.step == total)
        if decision.save and item.save is None and pending:
            # Only a metric-driven policy decides late, and it runs with window=1.
            raise AssertionError("a checkpoint decided after later steps were submitted")
        doomed = [c for c in state.checkpoints if c.step in decision.delete]
        if decision.save:
            ref = (
                watch.wait(item.save, "save_state")
                if item.save is not None
                else watch.wait(session.save_state(f"step-{state.step:06d}"), "save_state")
            )
            saved = SavedCheckpoint(
                ref=ref, step=state.step, metric=observed.get(policy.best_metric)
            )
            # Persist the new list first, delete retired files after: a crash in
            # between leaves an extra file, never a state pointing at a deleted one.
            state.checkpoints = [c for c in state.checkpoints if c not in doomed] + [saved]
            state.elapsed_s = elapsed()
            known[saved.step] = _snapshot(state)
            if on_checkpoint is not None:
                on_checkpoint(saved, _snapshot(state))
            say("train.checkpoint", step=state.step, uri=ref.uri, checkpoint_kind=ref.kind)
        elif item.save is not None:
            # Predicted but not wanted (the step was already saved): keep nothing extra.
            watch.wait(item.save, "save_state")
        for c in doomed:
            if on_delete is not None:
                on_delete(c)

    def drain() -> None:
        while pending:
            finish_oldest()

    def _save_now() -> None:
        # The session is idle (drained), so this saves exactly the state after state.step.
        ref = watch.wait(session.save_state(f"step-{state.step:06d}"), "save_state")
        saved = SavedCheckpoint(ref=ref, step=state.step, metric=state.last_loss)
        state.checkpoints.append(saved)
        state.elapsed_s = elapsed()
        known[saved.step] = _snapshot(state)
        if on_checkpoint is not None:
            on_checkpoint(saved, _snapshot(state))
        say("train.checkpoint", step=state.step, uri=ref.uri, checkpoint_kind=ref.kind)

    def stop_with(reason: str, make_error: Callable[[int], Exception]) -> None:
        drain()
        if not state.checkpoints or state.checkpoints[-1].step != state.step:
            _save_now()
        say("train.stopped", step=state.step, reason=reason)
        raise make_error(state.step)

    say("train.start", step=state.step, total_steps=total, resumed=resume is not None)
    bpe = batches_per_epoch(len(train_data), cfg.batch_size)
    for step in range(state.step, total):
        if stopped is not None:
            break
        if cancel is not None and cancel.is_set():
            reason = reason_of(cancel) or "cancelled"
            stop_with(reason, functools.partial(_cancelled_error, reason))
        micro = [
            batch_for_step(train_data, step, m, cfg, shuffle=shuffle) for m in range(cfg.grad_accum)
        ]
        step_tokens = sum(_tokens(b) for b, _ in micro)
        epoch = micro[-1][1]
        problem = _budget_problem(
            budget.max_tokens,
            budget.max_cost,
            budget.max_wall_time,
            tokens=state.tokens,
            cost=state.cost,
            step_tokens=step_tokens,
            price=price,
            elapsed=elapsed(),
            pace=(sum(step_times) / len(step_times)) if step_times else 0.0,
        )
        if problem is not None:
            stop_with(
                f"budget:{problem}", functools.partial(_budget_error, problem, job.job_id or "RUN")
            )
        state.tokens += step_tokens
        state.cost += step_tokens * price
        lr = learning_rate(cfg, step, total)
        submitted = clock()
        fb = [session.forward_backward(b, loss) for b, _ in micro]
        opt = session.optim_step(adam_params(cfg, lr))
        step_done = step + 1
        will_save = policy.saves_at(step_done, total)
        if policy.strategy == "epoch":
            before = step * cfg.grad_accum / bpe
            will_save = math.floor(epoch) > math.floor(before) or step_done == total
        save = session.save_state(f"step-{step_done:06d}") if will_save else None
        val = None
        if (
            val_spec is not None
            and val_spec.every_n_steps
            and validation_data
            and (step_done % val_spec.every_n_steps == 0 or step_done == total)
        ):
            val = session.forward(list(validation_data), loss)
        pending.append(_InFlight(step, epoch, fb, opt, lr, submitted, save, val, step_tokens))
        while len(pending) >= window:
            finish_oldest()
    drain()
    if stopped is not None and (not state.checkpoints or state.checkpoints[-1].step != state.step):
        # Early stopping ended the run off the save schedule: keep its final state.
        _save_now()
    state.elapsed_s = elapsed()
    say("train.end", step=state.step, loss=state.last_loss, stopped=stopped)
    best_step = tracker.best
    by_step = {c.step: c for c in state.checkpoints}
    return LoopResult(
        state=state,
        total_steps=total,
        losses=losses,
        best=by_step.get(best_step) if best_step is not None else None,
        last=state.checkpoints[-1] if state.checkpoints else None,
        stopped=stopped,
    )


def _budget_error(which: str, run: str, step: int) -> BudgetExhausted:
    return BudgetExhausted(
        f"stopped after step {step}: the next step would exceed {which}",
        hint=f"resume with a larger budget: crucible resume {run} --{which.replace('_', '-')} N",
        budget=which,
        step=step,
    )


def _cancelled_error(reason: str, step: int) -> Cancelled:
    verb = "interrupted" if reason in ("interrupted", "shutdown", "lease_lost") else "cancelled"
    return Cancelled(
        f"training {verb} after step {step}; a checkpoint was saved", step=step, reason=reason
    )


def _budget_problem(
    max_tokens: int | None,
    max_cost: float | None,
    max_wall_time: float | None,
    *,
    tokens: int,
    cost: float,
    step_tokens: int,
    price: float,
    elapsed: float,
    pace: float,
) -> str | None:
    if max_tokens is not None and tokens + step_tokens > max_tokens:
        return "max_tokens"
    if max_cost is not None and cost + step_tokens * price > max_cost:
        return "max_cost"
    if max_wall_time is not None and elapsed + pace > max_wall_time:
        return "max_wall_time"
    return None

"""The training loop over the training contract, pipelined, resumable and budgeted.

:func:`train` (one :class:`TrainLoop` run) drives any
:class:`~crucible_core.contracts.TrainingSession`: it submits step k+1's
``forward_backward`` and ``optim_step`` before it reads step k's results (at
most ``window`` steps in flight), because a remote backend works on a clock
and a naive loop waits a cycle per step. Calls are applied by the backend in
submission order, so a ``save_state`` submitted right after step k's
``optim_step`` saves exactly the state after step k even while later steps
are queued.

Exact resume: batches are a pure function of ``(seed, step)`` (each epoch is
a seeded permutation; the schedule's pure functions live in
:mod:`~crucible_core.train.schedule` and are re-exported here), so a run
restarted from the checkpoint of step k with the same data feeds step k+1 the
batch an uninterrupted run would have; the backend restores weights,
optimizer and RNG state (the conformance kit checks ``load_state``). The
loop's own state (step, tokens, cost, elapsed time, the checkpoints kept) is
a :class:`LoopState` saved beside every checkpoint.

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

A loop whose batches are not a fixed list (RL's sampled groups) passes a
:class:`BatchSource`: called as each step is submitted, it makes that step's
micro-batches and adds its metrics to the step's event; everything else
(schedule, budgets, checkpoints, resume, events) is the same loop.

Supported surface: :func:`train`, :class:`TrainLoop` (to drive a run a step
at a time), :class:`BatchSource`, :class:`LoopState`, :class:`LoopResult`,
:class:`SavedCheckpoint`, :data:`DEFAULT_DEADLINE_S`, and the re-exported
schedule functions.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol

import msgspec

from crucible_core.contracts import CancelToken, Future, TrainingSession
from crucible_core.errors import (
    BackendError,
    BudgetExhausted,
    Cancelled,
    DeadlineExceeded,
    Diverged,
)
from crucible_core.ir.backend import (
    CheckpointRef,
    Costs,
    Datum,
    ForwardBackwardResult,
    OptimStepResult,
)
from crucible_core.ir.training import TrainingJob
from crucible_core.pipeline.cancel import reason_of
from crucible_core.train.checkpoints import CheckpointTracker
from crucible_core.train.schedule import (
    adam_params,
    batch_for_step,
    batches_per_epoch,
    learning_rate,
    total_steps,
)

__all__ = [
    "DEFAULT_DEADLINE_S",
    "BatchSource",
    "Emit",
    "LoopResult",
    "LoopState",
    "OnSampled",
    "SavedCheckpoint",
    "TrainLoop",
    "adam_params",
    "batch_for_step",
    "batches_per_epoch",
    "learning_rate",
    "total_steps",
    "train",
]


#: How long one backend call may take before the watchdog reports it.
DEFAULT_DEADLINE_S = 600.0


class Emit(Protocol):
    """Where the loop reports events (``train.step``, ``train.checkpoint``, ...)."""

    def __call__(self, event: str, /, **data: Any) -> None: ...


#: ``on_sampled(step, saved, checkpoint)``: score the weights saved for sampling after ``step``.
OnSampled = Callable[[int, Future[Any], "str | None"], None]


def _quiet(event: str, /, **data: Any) -> None:
    """The default Emit: report nothing."""


class BatchSource(Protocol):
    """Makes the batches of a loop whose data is not a fixed list (RL's sampled groups).

    Called as ``source(loop, step, micro)`` when step ``step`` (0-based) is
    submitted, every earlier step's calls already queued on the session (so a
    call the source queues on it lands between step ``step - 1`` and step
    ``step``); returns micro-batch ``micro`` and the epoch it ends in. It may end
    the run with ``loop.stop(reason, make_error)`` (checkpoint first).
    """

    def __call__(self, loop: TrainLoop, step: int, micro: int, /) -> tuple[list[Datum], float]: ...

    def metrics(self, step: int, /) -> Mapping[str, float]:
        """Metrics of step ``step``'s batches, added to its ``train.step`` event."""
        ...


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
    #: Weights saved for sampling after this step (sampled metrics due), else None.
    sampled: Future[Any] | None = None

    def calls(self) -> list[Any]:
        """Its futures in submission order."""
        after = (self.save, self.val, self.sampled)
        return [*self.fb, self.opt, *(f for f in after if f is not None)]


def _mean_loss(results: Sequence[ForwardBackwardResult]) -> float:
    tokens = sum(r.num_tokens for r in results)
    if tokens > 0:
        return sum(r.loss * r.num_tokens for r in results) / tokens
    return sum(r.loss for r in results) / len(results)


class TrainLoop:
    """One run of the loop on ``session``: the run's state, and one method per rule.

    :func:`train` is ``TrainLoop(...).run()``, and ``run`` is :meth:`start`,
    :meth:`advance` for each step from ``state.step`` to ``total`` while
    ``stopped`` is None, then :meth:`finish`: a caller may drive those itself,
    a step at a time. The run's clock (``max_wall_time``, ``elapsed_s``)
    starts at construction. The arguments are :func:`train`'s.
    """

    def __init__(
        self,
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
        group: int = 1,
        batches: BatchSource | None = None,
        examples: int | None = None,
        on_sampled: OnSampled | None = None,
    ) -> None:
        self._session = session
        self._batches = batches
        self._group = group
        self._job = job
        self._budget = job.budget
        self._cfg = cfg = job.learning_config
        self._policy = policy = job.checkpoint_policy
        self._train_data = train_data
        self._shuffle = job.dataset_spec.shuffle
        self._validation_data = validation_data
        self._val_spec = val_spec = job.validation_spec
        # Validation runs every this many steps (None: no spec, no cadence or no data; an
        # unvalidated spec built in code may say 0, which means none too).
        self._val_every = (
            (val_spec.every_n_steps or None) if val_spec is not None and validation_data else None
        )
        # Sampled metrics every this many steps, before the last (``evaluate`` scores the end).
        self._on_sampled = on_sampled
        self._sample_every = (
            (val_spec.every_n_steps or None) if val_spec is not None and on_sampled else None
        )
        self._say: Emit = emit or _quiet
        self._cancel = cancel
        self._resumed = resume is not None
        self._on_checkpoint = on_checkpoint
        self._on_delete = on_delete
        self._price = (costs.train_per_mtok if costs else 0.0) / 1e6
        self._backend_name = backend_name
        self._watch = _Watchdog(backend_name, deadline_s)
        self._clock = clock
        #: Optimizer steps of the whole run (resumed or not).
        n_examples = len(train_data) // group if examples is None else examples
        self.total = total_steps(cfg, n_examples)
        self._bpe = batches_per_epoch(n_examples, cfg.batch_size)
        #: The loop's resumable state; ``state.step`` is the last step finished.
        self.state = state = msgspec.structs.replace(resume) if resume is not None else LoopState()
        state.checkpoints = list(state.checkpoints)
        self._tracker = CheckpointTracker(
            policy, saved=[(c.step, c.metric) for c in state.checkpoints]
        )
        #: Steps in flight at once; a metric-driven save ("best") needs step k's loss first.
        self.window = 1 if policy.strategy == "best" else max(1, window)
        #: Losses of the steps this process finished, in order.
        self.losses: list[float] = []
        #: Steps submitted and not yet read, oldest first.
        self.pending: deque[_InFlight] = deque()
        #: Why the run ended early without an error ("early_stopping"), else None.
        self.stopped: str | None = None
        self._elapsed_before = resume.elapsed_s if resume else 0.0
        self._session_start = clock()
        # The loop state of each checkpoint this process knows, to roll back to after a divergence.
        self._known: dict[int, LoopState] = {}
        if resume is not None and state.checkpoints:
            self._known[state.checkpoints[-1].step] = _snapshot(state)
        self._step_times: deque[float] = deque(maxlen=8)
        self._patience_left = val_spec.early_stopping_patience if val_spec else None
        self._best_val = min(state.val_history) if state.val_history else None
        # Not a stored bound method: that would be a reference cycle keeping the session alive.
        self._withdrawable = (
            cancel is not None and getattr(session, "withdraws_queued_calls", False) is True
        )

    def run(self) -> LoopResult:
        """The whole run: :meth:`start`, every remaining step, :meth:`finish`."""
        self.start()
        for step in range(self.state.step, self.total):
            if self.stopped is not None:
                break
            self.advance(step)
        return self.finish()

    def start(self) -> None:
        """Announce the run (``train.start``); once, before the first :meth:`advance`."""
        self._say(
            "train.start", step=self.state.step, total_steps=self.total, resumed=self._resumed
        )

    def advance(self, step: int) -> None:
        """Submit step ``step`` (0-based), then read the oldest steps until fewer than ``window``
        are in flight. Stops the run instead (checkpoint, then raise) when it is cancelled or the
        step would exceed a budget."""
        if self._cancel is not None:
            self.check_cancel()
        self.submit(step)
        while len(self.pending) >= self.window:
            self.finish_oldest()

    def finish(self) -> LoopResult:
        """Read every step in flight, keep the final state of a run that early stopping ended
        off the save schedule, announce ``train.end``, and report the run."""
        self.drain()
        if self.stopped is not None and not self._last_step_saved():
            self.save_now()
        state = self.state
        state.elapsed_s = self.elapsed()
        self._say("train.end", step=state.step, loss=state.last_loss, stopped=self.stopped)
        best_step = self._tracker.best
        by_step = {c.step: c for c in state.checkpoints}
        return LoopResult(
            state=state,
            total_steps=self.total,
            losses=self.losses,
            best=by_step.get(best_step) if best_step is not None else None,
            last=state.checkpoints[-1] if state.checkpoints else None,
            stopped=self.stopped,
        )

    def elapsed(self) -> float:
        """Wall time of the whole run, across resumes."""
        return self._elapsed_before + (self._clock() - self._session_start)

    def check_cancel(self) -> None:
        """If the cancel token is set, :meth:`stop` the run with
        :class:`~crucible_core.errors.Cancelled` (its reason, else ``cancelled``)."""
        cancel = self._cancel
        if cancel is not None and cancel.is_set():
            reason = reason_of(cancel) or "cancelled"
            self.stop(reason, functools.partial(_cancelled_error, reason))

    def budget_problem(self, step_tokens: int) -> str | None:
        """The budget (``max_tokens``, ``max_cost``, ``max_wall_time``, checked in that order)
        the next step, of ``step_tokens`` tokens, would exceed; None when it fits them all."""
        budget, state = self._budget, self.state
        elapsed = self.elapsed()  # read every step, whichever budgets are set
        times = self._step_times
        pace = (sum(times) / len(times)) if times else 0.0
        if budget.max_tokens is not None and state.tokens + step_tokens > budget.max_tokens:
            return "max_tokens"
        if budget.max_cost is not None and state.cost + step_tokens * self._price > budget.max_cost:
            return "max_cost"
        if budget.max_wall_time is not None and elapsed + pace > budget.max_wall_time:
            return "max_wall_time"
        return None

    def submit(self, step: int) -> None:
        """Queue step ``step``'s calls (its micro-batches' ``forward_backward``, ``optim_step``,
        and the ``save_state`` and validation ``forward`` due after it) and count its tokens and
        cost. If the step would exceed a budget, :meth:`stop` with
        :class:`~crucible_core.errors.BudgetExhausted` instead, submitting nothing."""
        cfg, session, state = self._cfg, self._session, self.state
        if self._batches is not None:
            micro = [self._batches(self, step, m) for m in range(cfg.grad_accum)]
        else:
            micro = [
                batch_for_step(
                    self._train_data, step, m, cfg, shuffle=self._shuffle, group=self._group
                )
                for m in range(cfg.grad_accum)
            ]
        step_tokens = sum(_tokens(b) for b, _ in micro)
        epoch = micro[-1][1]
        problem = self.budget_problem(step_tokens)
        if problem is not None:
            run = self._job.job_id or "RUN"
            self.stop(f"budget:{problem}", functools.partial(_budget_error, problem, run))
        state.tokens += step_tokens
        state.cost += step_tokens * self._price
        lr = learning_rate(cfg, step, self.total)
        submitted = self._clock()
        fb = [session.forward_backward(b, cfg.loss) for b, _ in micro]
        opt = session.optim_step(adam_params(cfg, lr))
        step_done = step + 1
        save = session.save_state(f"step-{step_done:06d}") if self._saves(step, epoch) else None
        val = (
            session.forward(list(self._validation_data), cfg.loss)
            if self._validates(step_done)
            else None
        )
        every = self._sample_every
        sampled = (
            session.save_weights_for_sampler(f"eval-step-{step_done:06d}")
            if every is not None and step_done % every == 0 and step_done != self.total
            else None
        )
        self.pending.append(
            _InFlight(step, epoch, fb, opt, lr, submitted, save, val, step_tokens, sampled)
        )

    def _saves(self, step: int, epoch: float) -> bool:
        """Whether the state after step ``step`` (0-based, ending in ``epoch``) is saved on the
        policy's schedule: its step cadence, or ("epoch") a step that ends an epoch; the last
        step always."""
        step_done = step + 1
        if self._policy.strategy == "epoch":
            before = step * self._cfg.grad_accum / self._bpe
            return math.floor(epoch) > math.floor(before) or step_done == self.total
        return self._policy.saves_at(step_done, self.total)

    def _validates(self, step_done: int) -> bool:
        """Whether the validation set is scored after ``step_done`` steps (every
        ``every_n_steps``, and after the last step)."""
        every = self._val_every
        return every is not None and (step_done % every == 0 or step_done == self.total)

    def finish_oldest(self) -> None:
        """Read the oldest step in flight and record it: state and ``train.step``, validation
        and early stopping, the checkpoint policy's save and deletions. A non-finite loss
        :meth:`rollback`-s instead."""
        item = self.pending.popleft()
        wait, tick = self._watch.wait, self.withdraw_queued if self._withdrawable else None
        results = [wait(f, "forward_backward", tick) for f in item.fb]
        opt = wait(item.opt, "optim_step", tick)
        step_loss = _mean_loss(results)
        if not math.isfinite(step_loss):
            self.rollback(item, step_loss)
        observed = self._record_step(item, results, opt, step_loss)
        if item.val is not None:
            self._record_validation(item.val, observed)
        self._apply_policy(item, observed)
        if item.sampled is not None and self._on_sampled is not None:
            kept = self.state.checkpoints
            here = kept[-1].ref.uri if kept and kept[-1].step == self.state.step else None
            self._on_sampled(self.state.step, item.sampled, here)

    def _record_step(
        self,
        item: _InFlight,
        results: Sequence[ForwardBackwardResult],
        opt: OptimStepResult,
        step_loss: float,
    ) -> dict[str, float]:
        """Advance the state to ``item``'s step and announce ``train.step``; returns the loss
        and the backend's metrics, what the checkpoint policy observes."""
        state = self.state
        self._step_times.append(self._clock() - item.submitted)
        state.step = item.step + 1
        state.last_loss = step_loss
        if state.first_loss is None:
            state.first_loss = step_loss
        self.losses.append(step_loss)
        metrics: dict[str, float] = {}
        for r in results:
            metrics.update(r.metrics)
        metrics.update(opt.metrics)
        if self._batches is not None:
            metrics.update(self._batches.metrics(item.step))
        self._say(
            "train.step",
            step=state.step,
            epoch=item.epoch,
            loss=step_loss,
            lr=item.lr,
            tokens=state.tokens,
            grad_norm=opt.grad_norm,
            total_steps=self.total,
            metrics=metrics,
        )
        return {"loss": step_loss, **metrics}

    def _record_validation(
        self, future: Future[ForwardBackwardResult], observed: dict[str, float]
    ) -> None:
        """Read the validation loss into ``observed`` and the history, announce it, and count
        early stopping's patience: a loss that does not beat the best so far uses one, and
        none left sets ``stopped``."""
        val = self._watch.wait(future, "forward")
        observed["val_loss"] = val.loss
        self.state.val_history.append(val.loss)
        self._say("eval.metric", step=self.state.step, split="validation", val_loss=val.loss)
        if self._patience_left is None:
            return
        if self._best_val is None or val.loss < self._best_val:
            self._best_val = val.loss
            self._patience_left = self._val_spec.early_stopping_patience if self._val_spec else None
        else:
            self._patience_left -= 1
            if self._patience_left <= 0:
                self.stopped = "early_stopping"

    def _apply_policy(self, item: _InFlight, observed: dict[str, float]) -> None:
        """Do what the checkpoint policy decides after ``item``'s step: record its save (the
        one in flight, or a new one) or drop an unwanted one, then delete what it retires."""
        state = self.state
        decision = self._tracker.observe(
            state.step, item.epoch, observed, final=state.step == self.total
        )
        if decision.save and item.save is None and self.pending:
            # Only a metric-driven policy decides late, and it runs with window=1.
            raise AssertionError("a checkpoint decided after later steps were submitted")
        doomed = [c for c in state.checkpoints if c.step in decision.delete]
        if decision.save:
            future = item.save
            if future is None:
                future = self._session.save_state(f"step-{state.step:06d}")
            ref = self._watch.wait(future, "save_state")
            saved = SavedCheckpoint(
                ref=ref, step=state.step, metric=observed.get(self._policy.best_metric)
            )
            # Persist the new list first, delete retired files after: a crash in
            # between leaves an extra file, never a state pointing at a deleted one.
            state.checkpoints = [c for c in state.checkpoints if c not in doomed] + [saved]
            self._record_checkpoint(saved)
        elif item.save is not None:
            # Predicted but not wanted (the step was already saved): keep nothing extra.
            self._watch.wait(item.save, "save_state")
        if doomed:
            self._delete(doomed)

    def _record_checkpoint(self, saved: SavedCheckpoint) -> None:
        """Persist ``saved``, already last in ``state.checkpoints``: stamp the elapsed time,
        remember the state for a rollback, call ``on_checkpoint``, announce it."""
        state = self.state
        state.elapsed_s = self.elapsed()
        self._known[saved.step] = _snapshot(state)
        if self._on_checkpoint is not None:
            self._on_checkpoint(saved, _snapshot(state))
        self._say(
            "train.checkpoint", step=state.step, uri=saved.ref.uri, checkpoint_kind=saved.ref.kind
        )

    def _delete(self, checkpoints: Sequence[SavedCheckpoint]) -> None:
        """Hand each retired checkpoint to ``on_delete``."""
        if self._on_delete is not None:
            for c in checkpoints:
                self._on_delete(c)

    def _last_step_saved(self) -> bool:
        """Whether the newest checkpoint holds the state after ``state.step``."""
        checkpoints = self.state.checkpoints
        return bool(checkpoints) and checkpoints[-1].step == self.state.step

    def drain(self) -> None:
        """Read every step in flight (:meth:`finish_oldest` until none is left)."""
        while self.pending:
            self.finish_oldest()

    def save_now(self) -> None:
        """Checkpoint the state after ``state.step`` now. Only with nothing in flight (after
        :meth:`drain`), so the save holds exactly that step."""
        assert not self.pending, "save_now with steps in flight"
        state = self.state
        ref = self._watch.wait(self._session.save_state(f"step-{state.step:06d}"), "save_state")
        saved = SavedCheckpoint(ref=ref, step=state.step, metric=state.last_loss)
        state.checkpoints.append(saved)
        self._record_checkpoint(saved)

    def stop(self, reason: str, make_error: Callable[[int], Exception]) -> NoReturn:
        """End the run early: drain, checkpoint the last step unless it is saved, announce
        ``train.stopped`` with ``reason``, and raise ``make_error(step)``."""
        self.drain()
        if not self._last_step_saved():
            self.save_now()
        self._say("train.stopped", step=self.state.step, reason=reason)
        raise make_error(self.state.step)

    def rollback(self, item: _InFlight, step_loss: float) -> NoReturn:
        """Step ``item`` (just read) has the non-finite ``step_loss``: discard every checkpoint
        from the weights that produced it on, persist the last good one's state again when it
        is known, announce ``train.stopped`` and raise :class:`~crucible_core.errors.Diverged`.

        The weights after step k-1 gave step k its loss, so checkpoints from k-1 on are suspect;
        saves still in flight are waited for and deleted (never recorded).
        """
        state, k = self.state, item.step + 1
        discarded: list[SavedCheckpoint] = []
        for it in [item, *self.pending]:
            if it.save is not None:
                ref = self._watch.wait(it.save, "save_state")
                discarded.append(SavedCheckpoint(ref=ref, step=it.step + 1))
        self.pending.clear()
        suspect = [c for c in state.checkpoints if c.step >= k - 1]
        good = [c for c in state.checkpoints if c.step < k - 1]
        if suspect and good and good[-1].step in self._known:
            back = _snapshot(self._known[good[-1].step])
            back.checkpoints = [c for c in back.checkpoints if c in good]
            if self._on_checkpoint is not None:
                self._on_checkpoint(good[-1], back)
            state.checkpoints = good
            discarded.extend(suspect)
        self._delete(discarded)
        last = state.checkpoints[-1].step if state.checkpoints else None
        self._say("train.stopped", step=k, reason="non_finite_loss", loss=step_loss)
        raise _diverged_error(k, step_loss, last, self._job.job_id or "RUN")

    def withdraw_queued(self) -> None:
        """If the run is cancelled, take back the steps queued behind the one being computed,
        newest first, and uncount their tokens and cost (the wait's tick, for a session that
        sets ``withdraws_queued_calls``).

        One FIFO worker: if a step's first call has not started, none of its calls has, so
        cancelling them all leaves the session exactly as it was.
        """
        cancel, pending = self._cancel, self.pending
        if cancel is None or not cancel.is_set():
            return
        while pending:
            item = pending[-1]
            calls = item.calls()
            if not calls[0].cancel():
                return
            if not all(f.cancel() for f in calls[1:]):
                raise BackendError(
                    f"backend {self._backend_name!r}: a queued call ran before the call queued "
                    "ahead of it, though the session sets withdraws_queued_calls",
                    hint="the session must run its calls one at a time, in submission order",
                )
            pending.pop()
            self.state.tokens -= item.tokens
            self.state.cost -= item.tokens * self._price


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
    group: int = 1,
    batches: BatchSource | None = None,
    examples: int | None = None,
    on_sampled: OnSampled | None = None,
) -> LoopResult:
    """Run the job's optimizer steps on ``session``; see the module docstring for the rules.

    ``on_checkpoint`` is called after each state checkpoint (with the loop
    state to persist beside it); ``on_delete`` when the checkpoint policy
    retires one. ``resume`` continues a run from the state saved with its
    last checkpoint (the caller has already ``load_state``-d the session).
    ``group`` datums in a row form one example kept whole in every batch (2 for
    DPO pairs; see :func:`~crucible_core.train.schedule.batch_for_step`).
    ``batches`` makes each step's micro-batches instead of ``train_data`` (a
    :class:`BatchSource`); the run then has ``examples`` examples an epoch.

    ``on_sampled(step, saved, checkpoint)`` scores sampled metrics every
    ``validation_spec.every_n_steps`` steps before the last: ``saved`` is the
    ``save_weights_for_sampler`` submitted right after that step, ``checkpoint``
    the URI of the state checkpoint kept at that step (or None).
    """
    return TrainLoop(
        session,
        job,
        train_data,
        validation_data=validation_data,
        emit=emit,
        cancel=cancel,
        resume=resume,
        on_checkpoint=on_checkpoint,
        on_delete=on_delete,
        costs=costs,
        backend_name=backend_name,
        window=window,
        deadline_s=deadline_s,
        clock=clock,
        group=group,
        batches=batches,
        examples=examples,
        on_sampled=on_sampled,
    ).run()


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


def _diverged_error(step: int, loss: float, last: int | None, run: str) -> Diverged:
    """Step ``step`` had the non-finite ``loss``; ``last`` is the newest checkpoint kept."""
    if last is None:
        kept = ", no checkpoint was saved before it"
    elif last < step - 1:
        kept = f", the last good checkpoint (step {last}) is kept"
    else:
        kept = f"; the newest checkpoint (step {last}) may hold the diverged weights"
    return Diverged(
        f"step {step}: the loss is {loss} (not finite); training stopped" + kept,
        hint="lower learning_config.optimizer.lr, or set optimizer.grad_clip, and train "
        f"again (or resume from the kept checkpoint with `crucible resume {run}`)",
        step=step,
        loss=str(loss),
        last_checkpoint=last,
    )

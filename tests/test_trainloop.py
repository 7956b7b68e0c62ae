"""The training loop: pipelining, exact resume, budgets, cancellation, deadlines, schedules."""

from __future__ import annotations

import gc
import itertools
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from crucible_core.errors import BudgetExhausted, Cancelled, DeadlineExceeded, Diverged
from crucible_core.ir import (
    AdamParams,
    Budget,
    CheckpointPolicy,
    CheckpointRef,
    DatasetSpec,
    Datum,
    ForwardBackwardResult,
    LearningConfig,
    Loss,
    ModelSpec,
    Scheduler,
    TrainingJob,
    ValidationSpec,
)
from crucible_core.ir.training import SGD, AdamW
from crucible_core.testing import make_datums
from crucible_core.train import loop as trainloop
from crucible_core.train.loop import LoopState, SavedCheckpoint, train
from tests.toy_backend import ByteTokenizer, ToySession, done

TEXTS = [f"sample {i}: the cat sat on the mat and looked at the hat." for i in range(24)]
DATA = make_datums(ByteTokenizer(), TEXTS, max_len=48)


def job(**learning: Any) -> TrainingJob:
    policy = learning.pop("policy", CheckpointPolicy(save_every=5, keep_last=2))
    budget = learning.pop("budget", Budget())
    validation = learning.pop("validation", None)
    cfg = LearningConfig(
        optimizer=AdamW(lr=learning.pop("lr", 0.02)),
        batch_size=learning.pop("batch_size", 4),
        max_steps=learning.pop("max_steps", 12),
        **learning,
    )
    return TrainingJob(
        model_spec=ModelSpec(name="toy"),
        dataset_spec=DatasetSpec(uri="mem"),
        learning_config=cfg,
        checkpoint_policy=policy,
        budget=budget,
        validation_spec=validation,
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, /, **data: Any) -> None:
        self.events.append((event, data))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]


def test_loss_falls_and_events_are_emitted() -> None:
    rec = Recorder()
    result = train(ToySession(), job(), DATA, emit=rec)
    assert result.total_steps == 12
    assert len(result.losses) == 12
    assert result.losses[-1] < result.losses[0]
    steps = rec.of("train.step")
    assert [e["step"] for e in steps] == list(range(1, 13))
    assert all(e["total_steps"] == 12 for e in steps)
    assert rec.of("train.start")[0]["resumed"] is False
    assert rec.of("train.end")[0]["step"] == 12
    # save_every=5 plus the final step; keep_last=2 plus the best.
    assert [e["step"] for e in rec.of("train.checkpoint")] == [5, 10, 12]


def test_checkpoint_retention_calls_on_delete() -> None:
    deleted: list[int] = []
    saved: list[int] = []
    policy = CheckpointPolicy(save_every=2, keep_last=2, save_best=False)
    result = train(
        ToySession(),
        job(policy=policy),
        DATA,
        on_checkpoint=lambda c, s: saved.append(c.step),
        on_delete=lambda c: deleted.append(c.step),
    )
    assert saved == [2, 4, 6, 8, 10, 12]
    assert deleted == [2, 4, 6, 8]
    assert [c.step for c in result.state.checkpoints] == [10, 12]


class SlowSession(ToySession):
    """Runs every call on one worker thread after a delay, like a remote backend's clock."""

    def __init__(self, delay: float = 0.02) -> None:
        super().__init__()
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.delay = delay
        self.log: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def _later(self, name: str, fn: Any) -> Future[Any]:
        with self.lock:
            self.log.append((f"submit:{name}", time.monotonic()))

        def run() -> Any:
            time.sleep(self.delay)
            value = fn().result()
            with self.lock:
                self.log.append((f"done:{name}", time.monotonic()))
            return value

        return self.pool.submit(run)

    def forward_backward(self, batch: Sequence[Datum], loss: Loss) -> Future[Any]:
        return self._later("fb", lambda: ToySession.forward_backward(self, batch, loss))

    def optim_step(self, params: AdamParams) -> Future[Any]:
        return self._later("opt", lambda: ToySession.optim_step(self, params))

    def save_state(self, name: str) -> Future[Any]:
        return self._later("save", lambda: ToySession.save_state(self, name))


def test_steps_are_pipelined_within_the_window() -> None:
    session = SlowSession()
    train(session, job(max_steps=6, policy=CheckpointPolicy(save_every=100)), DATA, window=2)
    order = [name for name, _ in sorted(session.log, key=lambda x: x[1])]
    # The second step's forward_backward is submitted before the first step finished.
    first_opt_done = order.index("done:opt")
    second_fb_submit = [i for i, n in enumerate(order) if n == "submit:fb"][1]
    assert second_fb_submit < first_opt_done
    # ... but never more than `window` steps are in flight.
    in_flight = 0
    for name in order:
        if name == "submit:opt":
            in_flight += 1
        elif name == "done:opt":
            in_flight -= 1
        assert in_flight <= 2


def test_pipelined_and_serial_loops_give_the_same_losses() -> None:
    a = train(SlowSession(0.0), job(max_steps=8), DATA, window=3)
    b = train(ToySession(), job(max_steps=8), DATA, window=1)
    assert a.losses == b.losses


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run() -> None:
    spec = job(max_steps=12, policy=CheckpointPolicy(save_every=4, keep_last=5))
    full = train(ToySession(), spec, DATA)
    states: dict[int, LoopState] = {}
    first = ToySession()
    stop = threading.Event()

    def keep(c: SavedCheckpoint, s: LoopState) -> None:
        states[c.step] = LoopState(**{f: getattr(s, f) for f in s.__struct_fields__})
        if c.step == 4:
            stop.set()

    with pytest.raises(Cancelled):
        train(first, spec, DATA, on_checkpoint=keep, cancel=stop, window=1)
    resumed_state = states[4]
    second = ToySession()
    second.load_state(resumed_state.checkpoints[-1].ref).result()
    rest = train(second, spec, DATA, resume=resumed_state)
    assert full.losses[4:] == pytest.approx(rest.losses, abs=1e-12)
    assert rest.state.step == 12


def test_token_budget_stops_before_exceeding_and_resumes() -> None:
    per_step = sum(len(d.model_input) for d in DATA[:4])
    spec = job(max_steps=10, budget=Budget(max_tokens=per_step * 3 + 5), batch_size=4)
    saved: list[LoopState] = []
    session = ToySession()
    with pytest.raises(BudgetExhausted) as info:
        train(session, spec, DATA, on_checkpoint=lambda c, s: saved.append(s), emit=Recorder())
    assert info.value.details["budget"] == "max_tokens"
    assert info.value.hint is not None
    assert "--max-tokens" in info.value.hint
    last = saved[-1]
    assert last.step == info.value.details["step"]
    assert last.tokens <= per_step * 3 + 5
    assert last.checkpoints[-1].step == last.step  # checkpoint first, then the error
    bigger = job(max_steps=10, budget=Budget(max_tokens=10**9), batch_size=4)
    resumed = ToySession()
    resumed.load_state(last.checkpoints[-1].ref).result()
    result = train(resumed, bigger, DATA, resume=last)
    assert result.state.step == 10


def test_cost_and_wall_time_budgets() -> None:
    from crucible_core.ir import Costs

    with pytest.raises(BudgetExhausted, match="max_cost"):
        train(
            ToySession(),
            job(budget=Budget(max_cost=0.001)),
            DATA,
            costs=Costs(train_per_mtok=1000.0),
        )
    ticks = iter(range(0, 10_000, 10))
    with pytest.raises(BudgetExhausted, match="max_wall_time"):
        train(
            ToySession(),
            job(budget=Budget(max_wall_time=35)),
            DATA,
            clock=lambda: float(next(ticks)),
        )


def test_cancellation_saves_then_raises() -> None:
    flag = threading.Event()
    rec = Recorder()

    def on_step(event: str, /, **data: Any) -> None:
        rec(event, **data)
        if event == "train.step" and data["step"] == 3:
            flag.set()

    with pytest.raises(Cancelled):
        train(ToySession(), job(), DATA, emit=on_step, cancel=flag, window=1)
    assert rec.of("train.stopped")[0]["reason"] == "cancelled"
    assert rec.of("train.checkpoint")[-1]["step"] == 3


class WithdrawingSession(SlowSession):
    """A FIFO single-worker session that lets the loop take back queued calls."""

    withdraws_queued_calls = True

    def __init__(self, gate_at_fb: int) -> None:
        super().__init__(delay=0.0)
        self.gate = threading.Event()
        self.fbs = 0
        self.gate_at_fb = gate_at_fb

    def forward_backward(self, batch: Sequence[Datum], loss: Loss) -> Future[Any]:
        self.fbs += 1
        if self.fbs != self.gate_at_fb:
            return super().forward_backward(batch, loss)

        def blocked() -> Any:
            self.gate.wait(10)
            return ToySession.forward_backward(self, batch, loss)

        return self._later("fb", blocked)


def test_a_cancel_withdraws_the_steps_queued_behind_the_running_one() -> None:
    from crucible_core.pipeline.cancel import CancelFlag

    session = WithdrawingSession(gate_at_fb=3)
    flag = CancelFlag()
    states: list[LoopState] = []

    def stop_during_step_3() -> None:
        time.sleep(0.2)  # the worker is now blocked inside step 3, steps 4-5 queued
        flag.set("interrupted")
        time.sleep(0.1)  # the loop polls the flag while it waits, withdraws 4-5
        session.gate.set()

    threading.Thread(target=stop_during_step_3, daemon=True).start()
    spec = job(max_steps=12, policy=CheckpointPolicy(save_every=100))
    with pytest.raises(Cancelled) as info:
        train(
            session, spec, DATA, cancel=flag, window=3, on_checkpoint=lambda c, s: states.append(s)
        )
    assert info.value.details == {"step": 3, "reason": "interrupted"}
    assert session.step == 3  # steps 4 and 5 were submitted, and never ran
    assert [n for n, _ in session.log].count("done:opt") == 3
    cfg = spec.learning_config
    three = sum(
        len(d.model_input) for s in range(3) for d in trainloop.batch_for_step(DATA, s, 0, cfg)[0]
    )
    assert states[-1].step == 3
    assert states[-1].tokens == three  # the withdrawn steps' tokens are not counted
    resumed = ToySession()
    resumed.load_state(states[-1].checkpoints[-1].ref).result()
    tail = train(resumed, spec, DATA, resume=states[-1], window=1).losses
    assert tail == train(ToySession(), spec, DATA, window=1).losses[3:]


class HangingSession(ToySession):
    def optim_step(self, params: AdamParams) -> Future[Any]:
        return Future()  # never resolves: the watchdog must say so


def test_deadline_names_backend_call_and_wait() -> None:
    with pytest.raises(DeadlineExceeded) as info:
        train(HangingSession(), job(), DATA, backend_name="toy", deadline_s=0.2, window=1)
    err = info.value
    assert "backend 'toy': optim_step did not answer within" in err.message
    assert err.details["call"] == "optim_step"
    assert err.details["waited_s"] >= 0.2
    assert err.retryable


def test_validation_and_early_stopping() -> None:
    rec = Recorder()
    spec = job(
        max_steps=40,
        lr=0.5,
        validation=ValidationSpec(every_n_steps=2, early_stopping_patience=2),
        policy=CheckpointPolicy(save_every=100),
    )
    val = make_datums(ByteTokenizer(), ["zzzz qqqq xxxx"] * 2)
    result = train(ToySession(), spec, DATA, validation_data=val, emit=rec)
    evals = rec.of("eval.metric")
    assert evals
    assert all("val_loss" in e for e in evals)
    assert result.stopped == "early_stopping"
    assert result.state.step < 40
    assert result.last is not None
    assert result.last.step == result.state.step


def test_best_strategy_saves_on_improvement_only() -> None:
    rec = Recorder()
    policy = CheckpointPolicy(strategy="best", keep_last=1)
    result = train(ToySession(), job(max_steps=8, policy=policy), DATA, emit=rec)
    saved = [e["step"] for e in rec.of("train.checkpoint")]
    assert saved
    assert result.best is not None
    assert result.best.step in saved


def test_learning_rate_schedules() -> None:
    def cfg(name: str, warmup: int = 0, floor: float = 0.0) -> LearningConfig:
        return LearningConfig(
            optimizer=AdamW(lr=1.0),
            scheduler=Scheduler(name=name, warmup_steps=warmup, min_lr_ratio=floor),
        )

    assert [trainloop.learning_rate(cfg("constant", 4), s, 10) for s in range(5)] == [
        0.25,
        0.5,
        0.75,
        1.0,
        1.0,
    ]
    # Linear and cosine reach their floor after the last step (the usual convention).
    lin = [trainloop.learning_rate(cfg("linear"), s, 10) for s in range(10)]
    assert lin == pytest.approx([1.0 - s / 10 for s in range(10)])
    cos = [trainloop.learning_rate(cfg("cosine", floor=0.1), s, 10) for s in range(10)]
    assert cos[0] == 1.0
    assert cos[5] == pytest.approx(0.55)
    assert all(a > b for a, b in itertools.pairwise(cos))
    assert cos[-1] > 0.1
    warm = [trainloop.learning_rate(cfg("linear", 2), s, 6) for s in range(6)]
    assert warm == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])


def test_total_steps_and_batches() -> None:
    assert trainloop.total_steps(LearningConfig(max_steps=7, batch_size=4), 24) == 7
    assert trainloop.total_steps(LearningConfig(max_steps=None, epochs=2, batch_size=4), 24) == 12
    assert trainloop.total_steps(LearningConfig(max_steps=100, epochs=1, batch_size=4), 24) == 6
    cfg = LearningConfig(batch_size=5, seed=3)
    seen: list[int] = []
    for step in range(5):
        batch, epoch = trainloop.batch_for_step(DATA, step, 0, cfg)
        seen.extend(DATA.index(d) for d in batch)
        assert epoch == pytest.approx((step + 1) / 5)
    assert sorted(seen) == list(range(24))  # one epoch visits every datum once
    again = [trainloop.batch_for_step(DATA, s, 0, cfg)[0] for s in range(5)]
    assert [DATA.index(d) for b in again for d in b] == seen
    from crucible_core.errors import ConfigError

    with pytest.raises(ConfigError, match="training set is empty"):
        trainloop.total_steps(LearningConfig(), 0)


def test_adam_params_follow_the_optimizer() -> None:
    adam = trainloop.adam_params(
        LearningConfig(optimizer=AdamW(lr=0.1, betas=(0.8, 0.9), grad_clip=None)), 0.05
    )
    assert (adam.learning_rate, adam.beta1, adam.beta2, adam.grad_clip_norm) == (
        0.05,
        0.8,
        0.9,
        0.0,
    )
    sgd = trainloop.adam_params(LearningConfig(optimizer=SGD(momentum=0.5, grad_clip=2.0)), 0.01)
    assert (sgd.beta1, sgd.grad_clip_norm) == (0.5, 2.0)


def test_grad_accum_submits_micro_batches() -> None:
    class Counting(ToySession):
        calls = 0

        def forward_backward(self, batch: Sequence[Datum], loss: Loss) -> Future[Any]:
            Counting.calls += 1
            return super().forward_backward(batch, loss)

        def save_state(self, name: str) -> Future[CheckpointRef]:
            return super().save_state(name)

    result = train(Counting(), job(max_steps=3, grad_accum=3), DATA)
    assert Counting.calls == 9
    assert result.state.step == 3


class NanAfter(ToySession):
    """Its loss turns nan once the weights have taken ``bad_after`` optimizer steps.

    A mock of a fault: a diverging model is slow and flaky to provoke in a unit test (the e2e
    test in tests/e2e/test_interrupt.py diverges a real model); the loss is what the loop reads.
    """

    def __init__(self, bad_after: int) -> None:
        super().__init__()
        self.bad_after = bad_after

    def forward_backward(self, batch: Sequence[Datum], loss: Loss) -> Future[Any]:
        if self.step < self.bad_after:
            return super().forward_backward(batch, loss)
        return done(ForwardBackwardResult(loss=float("nan"), num_tokens=1))


def test_a_non_finite_loss_rolls_back_to_the_last_good_checkpoint() -> None:
    # The weights after step 4 give step 5 a nan: checkpoints 4 (suspect), 5 and 6 (in flight
    # in the window of 2) are deleted, and the state of checkpoint 3 is persisted again.
    rec = Recorder()
    deleted: list[int] = []
    persisted: list[tuple[int, LoopState]] = []
    policy = CheckpointPolicy(save_every=1, keep_last=10, save_best=False)
    with pytest.raises(Diverged) as info:
        train(
            NanAfter(4),
            job(policy=policy),
            DATA,
            emit=rec,
            window=2,
            on_checkpoint=lambda c, s: persisted.append((c.step, s)),
            on_delete=lambda c: deleted.append(c.step),
        )
    assert info.value.details == {"step": 5, "loss": "nan", "last_checkpoint": 3}
    assert "the last good checkpoint (step 3) is kept" in info.value.message
    assert sorted(deleted) == [4, 5, 6]
    assert [s for s, _ in persisted] == [1, 2, 3, 4, 3]
    back = persisted[-1][1]
    assert back.step == 3
    assert [c.step for c in back.checkpoints] == [1, 2, 3]
    [stopped] = rec.of("train.stopped")
    assert (stopped["step"], stopped["reason"]) == (5, "non_finite_loss")


def test_a_non_finite_loss_with_no_earlier_checkpoint_keeps_the_newest() -> None:
    deleted: list[int] = []
    policy = CheckpointPolicy(save_every=1, keep_last=10, save_best=False)
    with pytest.raises(Diverged) as info:
        train(
            NanAfter(1),
            job(policy=policy),
            DATA,
            window=2,
            on_delete=lambda c: deleted.append(c.step),
        )
    assert info.value.details["last_checkpoint"] == 1
    assert "may hold the diverged weights" in info.value.message
    assert sorted(deleted) == [2, 3]  # the saves in flight; checkpoint 1 is all there is


def test_the_loop_can_be_driven_a_step_at_a_time() -> None:
    spec = job(max_steps=6, policy=CheckpointPolicy(save_every=3, keep_last=5))
    rec = Recorder()
    loop = trainloop.TrainLoop(ToySession(), spec, DATA, emit=rec, window=2)
    loop.start()
    loop.advance(0)
    assert (loop.state.step, len(loop.pending)) == (0, 1)  # step 1 is in flight, not read
    loop.advance(1)
    assert (loop.state.step, len(loop.pending)) == (1, 1)
    for step in range(2, loop.total):
        loop.advance(step)
    result = loop.finish()
    whole = Recorder()
    assert result.losses == train(ToySession(), spec, DATA, emit=whole).losses
    assert [k for k, _ in rec.events] == [k for k, _ in whole.events]
    assert [c.step for c in result.state.checkpoints] == [3, 6]


def test_a_driven_loop_stops_with_a_checkpoint_of_the_last_step_read() -> None:
    saved: list[int] = []
    spec = job(max_steps=6, policy=CheckpointPolicy(save_every=100, save_best=False))
    loop = trainloop.TrainLoop(
        ToySession(), spec, DATA, window=2, on_checkpoint=lambda c, s: saved.append(c.step)
    )
    loop.start()
    for step in range(3):
        loop.advance(step)
    with pytest.raises(RuntimeError, match="paused at 3"):
        loop.stop("paused", lambda step: RuntimeError(f"paused at {step}"))
    assert not loop.pending
    assert loop.state.step == 3
    assert saved == [3]


def test_the_budget_check_names_the_budget_the_next_step_would_exceed() -> None:
    loop = trainloop.TrainLoop(ToySession(), job(budget=Budget(max_tokens=100)), DATA)
    assert loop.budget_problem(100) is None
    assert loop.budget_problem(101) == "max_tokens"
    assert loop.state.tokens == 0  # a question, not a step


def test_a_finished_loop_leaves_no_cycle_holding_the_session() -> None:
    # A session may hold a model: it must be freed when its last reference goes, not at
    # the next cyclic garbage collection.
    class Withdrawable(ToySession):
        withdraws_queued_calls = True

    session = Withdrawable()
    alive = weakref.ref(session)
    gc.disable()
    try:
        train(session, job(max_steps=3), DATA, cancel=threading.Event())
        del session
        assert alive() is None
    finally:
        gc.enable()

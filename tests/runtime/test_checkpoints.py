"""The checkpoint-policy engine: examples per strategy and retention properties."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.ir.training import CheckpointPolicy
from crucible_core.train.checkpoints import CheckpointTracker


def test_steps_strategy_saves_every_n_and_keeps_last_plus_best() -> None:
    t = CheckpointTracker(CheckpointPolicy(save_every=10, keep_last=2, best_metric="loss"))
    losses = {10: 0.5, 20: 0.9, 30: 0.8, 40: 0.7}
    saved: list[int] = []
    deleted: list[int] = []
    for step in range(1, 41):
        d = t.observe(step, None, {"loss": losses.get(step, 1.0)})
        if d.save:
            saved.append(step)
        deleted.extend(d.delete)
    assert saved == [10, 20, 30, 40]
    assert deleted == [20]
    assert t.kept == [10, 30, 40]
    assert t.best == 10


def test_final_step_is_always_saved_once() -> None:
    t = CheckpointTracker(CheckpointPolicy(save_every=100))
    assert not t.observe(37, None, {}).save
    assert t.observe(37, None, {}, final=True).save
    assert not t.observe(37, None, {}, final=True).save


def test_last_strategy_keeps_only_the_newest_and_the_best() -> None:
    t = CheckpointTracker(CheckpointPolicy(strategy="last", save_every=1, keep_last=5))
    for step, loss in enumerate([3.0, 1.0, 2.0, 2.5], start=1):
        t.observe(step, None, {"loss": loss})
    assert t.kept == [2, 4]
    assert t.best == 2


def test_best_strategy_saves_on_improvement_only() -> None:
    policy = CheckpointPolicy(strategy="best", best_metric="acc", best_mode="max", keep_last=1)
    t = CheckpointTracker(policy)
    saves = [t.observe(s, None, {"acc": a}).save for s, a in enumerate([0.1, 0.3, 0.2, 0.3, 0.5])]
    assert saves == [True, True, False, False, True]
    assert t.best == 4
    assert t.kept == [1, 4]


def test_epoch_strategy_saves_once_per_completed_epoch() -> None:
    t = CheckpointTracker(CheckpointPolicy(strategy="epoch"))
    epochs = [0.25, 0.5, 1.0, 1.5, 1.75, 2.0, 2.0]
    saves = [t.observe(s, e, {}).save for s, e in enumerate(epochs, start=1)]
    assert saves == [False, False, True, False, False, True, False]


def test_all_strategy_never_deletes() -> None:
    t = CheckpointTracker(CheckpointPolicy(strategy="all", save_every=1, keep_last=1))
    for step in range(1, 8):
        assert t.observe(step, None, {"loss": float(step)}).delete == []
    assert t.kept == list(range(1, 8))


def test_non_numeric_metrics_never_become_best() -> None:
    t = CheckpointTracker(CheckpointPolicy(save_every=1, keep_last=1))
    for step, loss in enumerate([math.nan, "low", True, None], start=1):
        t.observe(step, None, {"loss": loss})
    assert t.best is None
    t.observe(5, None, {"loss": 2})
    assert t.best == 5


def test_restored_state_keeps_retention() -> None:
    t = CheckpointTracker(CheckpointPolicy(save_every=1, keep_last=1), saved=[(1, 0.1), (2, 0.5)])
    assert t.best == 1
    d = t.observe(3, None, {"loss": 0.9})
    assert d.delete == [2]
    assert t.kept == [1, 3]


observations = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=5),
        st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32)),
        st.booleans(),
    ),
    min_size=1,
    max_size=60,
)
policies = st.builds(
    CheckpointPolicy,
    strategy=st.sampled_from(["steps", "epoch", "best", "last", "all"]),
    save_every=st.integers(min_value=1, max_value=4),
    keep_last=st.integers(min_value=1, max_value=4),
    save_best=st.booleans(),
    best_mode=st.sampled_from(["min", "max"]),
)


@settings(max_examples=300, deadline=None)
@given(policy=policies, stream=observations)
def test_retention_properties(
    policy: CheckpointPolicy, stream: list[tuple[int, float | None, bool]]
) -> None:
    tracker = CheckpointTracker(policy)
    on_disk: set[int] = set()
    values: dict[int, float] = {}
    step = 0
    for n, (gap, loss, final) in enumerate(stream):
        step += gap
        is_final = final and n == len(stream) - 1
        metrics = {} if loss is None else {"loss": loss}
        d = tracker.observe(step, step / 7, metrics, final=is_final)
        if d.save:
            assert step not in on_disk
            on_disk.add(step)
            if loss is not None and math.isfinite(loss):
                values[step] = loss
        assert set(d.delete) <= on_disk
        assert step not in d.delete
        assert d.best not in d.delete
        on_disk -= set(d.delete)
        assert on_disk == set(tracker.kept)
        if is_final:
            assert step in on_disk
        if d.best is not None:
            assert d.best in on_disk
            best_value = values[d.best]
            pick = min if policy.best_mode == "min" else max
            assert best_value == pick(values.values())
        elif policy.save_best or policy.strategy == "best":
            assert not values
        if policy.strategy != "all":
            limit = 1 if policy.strategy == "last" else policy.keep_last
            assert len(on_disk) <= limit + 1

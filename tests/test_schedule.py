"""The one learning-rate schedule rule (Scheduler.multiplier): warmup, then decay to the floor."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.ir import AdamW, LearningConfig, Scheduler
from crucible_core.train.loop import learning_rate


@given(
    name=st.sampled_from(["constant", "linear", "cosine"]),
    warmup=st.integers(0, 20),
    floor=st.floats(0, 1),
    total=st.integers(1, 200),
)
def test_warmup_rises_then_the_rate_never_rises_and_stays_above_the_floor(
    name: str, warmup: int, floor: float, total: int
) -> None:
    s = Scheduler(name=name, warmup_steps=warmup, min_lr_ratio=floor)  # type: ignore[arg-type]
    values = [s.multiplier(step, total) for step in range(total + 5)]
    for step in range(1, min(warmup, len(values))):
        assert values[step] > values[step - 1]
    after = values[warmup:]
    for a, b in itertools.pairwise(after):
        assert b <= a + 1e-12
    assert all(min(floor, 1.0) - 1e-12 <= v <= 1.0 + 1e-12 for v in after)
    if name != "constant" and total > warmup:
        assert values[-1] == pytest.approx(floor)


def test_the_loop_sends_base_rate_times_the_multiplier() -> None:
    config = LearningConfig(
        optimizer=AdamW(lr=0.01), scheduler=Scheduler(name="cosine", warmup_steps=2)
    )
    assert learning_rate(config, 0, 10) == pytest.approx(0.005)
    assert learning_rate(config, 2, 10) == pytest.approx(0.01)
    assert learning_rate(config, 10, 10) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="needs the total number of steps"):
        Scheduler(name="linear").multiplier(3, None)

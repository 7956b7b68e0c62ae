"""Grid expansion over a real TrainingJob (examples/dates-local.toml): keys checked against
the schema with did-you-mean, cells counted and named deterministically."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from crucible_harness.grid import check_key, expand
from hypothesis import given, settings
from hypothesis import strategies as hs

from crucible_core.errors import ConfigError, ValidationError
from crucible_core.ir.codec import decode_file
from crucible_core.ir.training import TrainingJob

REPO = Path(__file__).resolve().parents[3]
BASE: TrainingJob = decode_file(REPO / "examples" / "dates-local.toml", TrainingJob)


def test_two_by_two_by_two_seeds() -> None:
    cells = expand(
        BASE,
        {"learning_config.optimizer.lr": [1e-3, 5e-3], "learning_config.batch_size": [8, 16]},
        seeds=[0, 1],
    )
    assert len(cells) == 8
    assert len({c.cell_id for c in cells}) == 8
    first = cells[0]
    assert first.overrides == {
        "learning_config.optimizer.lr": 1e-3,
        "learning_config.batch_size": 8,
    }
    assert first.job.learning_config.optimizer.lr == 1e-3
    assert first.job.learning_config.batch_size == 8
    assert first.job.job_id == first.cell_id
    assert [c.seed for c in cells[:2]] == [0, 1]
    assert [c.job.learning_config.seed for c in cells[:2]] == [0, 1]
    # untouched fields stay the base job's
    assert first.job.dataset_spec == BASE.dataset_spec
    again = expand(
        BASE,
        {"learning_config.optimizer.lr": [1e-3, 5e-3], "learning_config.batch_size": [8, 16]},
        seeds=[0, 1],
    )
    assert [c.cell_id for c in again] == [c.cell_id for c in cells]


def test_explicit_cells_and_repeats() -> None:
    cells = expand(
        BASE,
        cells=[{"learning_config.max_steps": 10}, {"learning_config.max_steps": 20}],
        repeats=2,
    )
    assert [c.job.learning_config.max_steps for c in cells] == [10, 10, 20, 20]
    assert [c.repeat for c in cells] == [0, 1, 0, 1]
    assert len({c.cell_id for c in cells}) == 4
    assert len(expand(BASE)) == 1  # no grid: the base job once


def test_unknown_key_names_path_and_suggests() -> None:
    with pytest.raises(ConfigError) as err:
        check_key("learning_config.optimzer.lr")
    assert "parameter_grid.learning_config.optimzer.lr" in err.value.message
    assert "learning_config has no field 'optimzer'" in err.value.message
    assert "did you mean 'learning_config.optimizer'" in (err.value.hint or "")
    with pytest.raises(ConfigError, match="has no fields"):
        check_key("learning_config.seed.x")
    with pytest.raises(ConfigError, match=r"cells\[0\]\.lerning_config"):
        expand(BASE, cells=[{"lerning_config.seed": 1}])
    check_key("metadata.owner")  # free-form mapping: any key below it
    check_key("dataset_spec.options.preset")


def test_bad_value_names_its_field() -> None:
    with pytest.raises(ValidationError, match=r"learning_config\.batch_size"):
        expand(BASE, {"learning_config.batch_size": ["big"]})
    with pytest.raises(ConfigError, match="non-empty list"):
        expand(BASE, {"learning_config.batch_size": []})


@settings(max_examples=30, deadline=None)
@given(
    hs.lists(hs.integers(1, 64), min_size=1, max_size=3, unique=True),
    hs.lists(hs.integers(1, 500), min_size=1, max_size=3, unique=True),
    hs.lists(hs.integers(0, 10**6), max_size=3, unique=True),
    hs.integers(1, 3),
)
def test_cell_count_and_unique_ids(
    batch: list[int], steps: list[int], seeds: list[int], repeats: int
) -> None:
    grid = {"learning_config.batch_size": batch, "learning_config.max_steps": steps}
    cells = expand(BASE, grid, seeds=seeds, repeats=repeats)
    assert len(cells) == math.prod(map(len, grid.values())) * max(1, len(seeds)) * repeats
    assert len({c.cell_id for c in cells}) == len(cells)


@settings(max_examples=30, deadline=None)
@given(
    hs.lists(hs.one_of(hs.none(), hs.floats(0.0, 5.0)), min_size=1, max_size=8),
    hs.floats(0.0, 10.0),
)
def test_cost_budget_takes_the_longest_prefix_that_fits(
    costs: list[float | None], max_cost: float
) -> None:
    from crucible_harness.experiment import CellPlan, LoadedExperiment, within_budget

    from crucible_core.ir import Budget, Experiment

    cells = expand(BASE, cells=[{"learning_config.max_steps": i + 1} for i in range(len(costs))])
    loaded = LoadedExperiment(
        path=Path("x.toml"),
        experiment=Experiment(id="x", budget=Budget(max_cost=max_cost)),
        base=BASE,
        cells=cells,
    )
    plans = [CellPlan(c, True, cost, None, None, []) for c, cost in zip(cells, costs, strict=True)]
    kept = within_budget(loaded, plans)
    assert kept == cells[: len(kept)]  # a prefix, in cell order
    spent = sum(c or 0.0 for c in costs[: len(kept)])
    assert spent <= max_cost
    if len(kept) < len(cells):  # the next cell would have gone over
        assert spent + (costs[len(kept)] or 0.0) > max_cost

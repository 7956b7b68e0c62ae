"""Experiment IR: a DAG of stages run against a backend, possibly over a parameter grid.

A grid experiment (``crucible experiment``, plugin crucible-harness) names its
base :class:`~crucible_core.ir.training.TrainingJob` in ``job`` (inline, or
the path of a TrainingJob file relative to the experiment file), the grid of
overrides in ``parameter_grid``, what each cell is scored on after training
in ``evaluation``, and the limit of the whole experiment in ``budget``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta

from crucible_core.ir.base import (
    SCHEMA_VERSION,
    FiniteFloat,
    Identifier,
    IRStruct,
    Params,
    PositiveInt,
    SchemaVersion,
)
from crucible_core.ir.common import BackendRef
from crucible_core.ir.training import Budget, DatasetSpec, TrainingJob

__all__ = ["BackendRef", "CellEval", "Experiment", "QualityTarget", "StageDef"]


class StageDef(IRStruct, frozen=True, kw_only=True):
    """One node of an experiment's DAG: ``uses`` names a registered stage."""

    name: Identifier
    uses: Annotated[str, Meta(min_length=1)]
    options: Params = {}
    depends_on: list[str] = []
    enabled: bool = True


class QualityTarget(IRStruct, frozen=True, kw_only=True):
    """A pass/fail bar on a metric, e.g. ``accuracy >= 0.8``."""

    metric: Annotated[str, Meta(min_length=1)]
    op: Literal[">", ">=", "<", "<=", "==", "!="] = ">="
    value: FiniteFloat

    def check(self, observed: float) -> bool:
        """Whether ``observed`` meets the target."""
        ops = {
            ">": observed > self.value,
            ">=": observed >= self.value,
            "<": observed < self.value,
            "<=": observed <= self.value,
            "==": observed == self.value,
            "!=": observed != self.value,
        }
        return ops[self.op]


class CellEval(IRStruct, frozen=True, kw_only=True):
    """What every cell of a grid experiment is scored on once trained (``crucible eval``).

    ``dataset`` is a URI crucible-datasets reads (``sample:gsm8k``, a file
    relative to the experiment file); ``metrics`` are registered metric names;
    ``n`` caps the examples scored; ``preset`` names the row format of a file;
    ``extract`` is the answer extraction before scoring. The scores are
    ``eval.<metric>`` for quality targets and reports.
    """

    dataset: Annotated[str, Meta(min_length=1)]
    metrics: Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1)]
    n: PositiveInt | None = None
    preset: str | None = None
    extract: Literal["auto", "number", "choice", "none"] = "auto"


class Experiment(IRStruct, frozen=True, kw_only=True):
    """A declared experiment: stages (a DAG), a backend, data, a grid and targets.

    For a grid experiment: ``job`` is the base TrainingJob (a table, or a
    path to a TrainingJob file relative to the experiment file) each cell
    overrides with its ``parameter_grid`` values; ``evaluation`` scores each
    trained cell; ``budget`` bounds the whole experiment (``max_wall_time``
    seconds since its first cell was submitted, ``max_cost`` summed over the
    cells): once spent, no new cell starts (running cells finish).
    """

    schema_version: SchemaVersion = SCHEMA_VERSION
    id: Identifier
    name: str = ""
    description: str = ""
    backend: BackendRef = BackendRef(name="local")
    dataset: DatasetSpec | None = None
    stages: list[StageDef] = []
    parameter_grid: dict[str, list[Any]] = {}
    repeats: PositiveInt = 1
    seeds: list[int] = []
    quality_targets: list[QualityTarget] = []
    job: TrainingJob | Annotated[str, Meta(min_length=1)] | None = None
    evaluation: CellEval | None = None
    budget: Budget | None = None
    outputs: list[str] = []
    metadata: Params = {}

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dupes)}")
        known = set(names)
        for stage in self.stages:
            missing = [d for d in stage.depends_on if d not in known]
            if missing:
                raise ValueError(
                    f"stage {stage.name!r} depends on unknown stage(s): {', '.join(missing)}"
                )

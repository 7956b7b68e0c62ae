"""Experiment IR: a DAG of stages run against a backend, possibly over a parameter grid."""

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
from crucible_core.ir.training import DatasetSpec

__all__ = ["BackendRef", "Experiment", "QualityTarget", "StageDef"]


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


class Experiment(IRStruct, frozen=True, kw_only=True):
    """A declared experiment: stages (a DAG), a backend, data, a grid and targets."""

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

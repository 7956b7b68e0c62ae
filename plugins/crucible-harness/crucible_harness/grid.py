"""Experiment grids: a base TrainingJob, parameter overrides, seeds -> one job per cell.

A grid is a mapping from a dotted path into :class:`~crucible_core.ir.TrainingJob`
(``learning_config.optimizer.lr``, ``adapter_config.rank``) to the values it
takes; the cells are their cartesian product, in key order then value order.
Explicit cells (a list of override mappings) are added as given, after the
product. Each cell runs once per seed (``learning_config.seed``; ``seeds``
default to ``[base seed]``) and ``repeats`` times per seed.

Every key is checked against the TrainingJob schema before anything runs: an
unknown segment is a ConfigError (exit 2) naming the whole path, the segment,
and the closest field (did-you-mean). Every cell's job is then validated as
IR, so a wrong value names its field too.

A cell's id is a digest of its overrides, seed and repeat: the same grid
gives the same ids in every process, which is what lets a re-run skip the
cells that already finished.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from crucible_core.errors import ConfigError
from crucible_core.ir.codec import convert, to_builtins
from crucible_core.ir.training import TrainingJob

__all__ = ["Cell", "apply_overrides", "check_key", "expand"]


@dataclass(frozen=True)
class Cell:
    """One training run of a grid: its overrides, seed, repeat and the resulting job."""

    cell_id: str
    overrides: dict[str, Any]
    seed: int
    repeat: int
    job: TrainingJob


def _struct_types(tp: Any) -> list[type[msgspec.Struct]]:
    """The Struct types a field's type can hold (through Optional and unions)."""
    info = msgspec.inspect.type_info(tp) if not isinstance(tp, msgspec.inspect.Type) else tp
    if isinstance(info, msgspec.inspect.StructType):
        return [info.cls]
    if isinstance(info, msgspec.inspect.UnionType):
        return [t for member in info.types for t in _struct_types(member)]
    return []


def _is_mapping(tp: Any) -> bool:
    """Whether a field's type is (or may be) a free-form mapping (``metadata``, ``options``)."""
    info = msgspec.inspect.type_info(tp) if not isinstance(tp, msgspec.inspect.Type) else tp
    if isinstance(info, msgspec.inspect.DictType):
        return True
    if isinstance(info, msgspec.inspect.UnionType):
        return any(_is_mapping(member) for member in info.types)
    return False


def _fields(types: Sequence[type[msgspec.Struct]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for cls in types:
        info = cast(msgspec.inspect.StructType, msgspec.inspect.type_info(cls))
        for f in info.fields:
            out.setdefault(f.name, []).append(f.type)
    return out


def check_key(key: str, *, where: str = "parameter_grid") -> None:
    """ConfigError unless ``key`` is a dotted path of TrainingJob fields.

    A path may end at a field whose value is not a struct (``learning_config.seed``)
    or at a struct (then the value replaces it whole, validated as that struct);
    below a free-form mapping (``metadata.owner``, ``dataset_spec.options.x``) any key goes.
    """
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{where}: {key!r} is not a dotted field path")
    types: list[type[msgspec.Struct]] = [TrainingJob]
    walked: list[str] = []
    for part in key.split("."):
        if not types:
            raise ConfigError(
                f"{where}.{key}: {'.'.join(walked)} has no fields (it is a value)",
                hint=f"use {'.'.join(walked)!r} itself as the key",
            )
        fields = _fields(types)
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1)
            owner = ".".join(walked) or "TrainingJob"
            raise ConfigError(
                f"{where}.{key}: {owner} has no field {part!r}",
                hint=(f"did you mean {'.'.join([*walked, close[0]])!r}? " if close else "")
                + "fields: "
                + ", ".join(sorted(fields)),
            )
        walked.append(part)
        if any(_is_mapping(tp) for tp in fields[part]):
            return  # keys below a free-form mapping are the user's own
        types = [t for tp in fields[part] for t in _struct_types(tp)]


def apply_overrides(base: TrainingJob, overrides: Mapping[str, Any], *, job_id: str) -> TrainingJob:
    """``base`` with each dotted path set to its value and its ``job_id`` set,
    validated as a TrainingJob (a bad value is a ConfigError naming its field)."""
    data = cast(dict[str, Any], to_builtins(base))
    for key, value in overrides.items():
        check_key(key)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = cast(dict[str, Any], child)
        node[parts[-1]] = value
    data["job_id"] = job_id
    return convert(data, TrainingJob)


def _cell_id(prefix: str, overrides: Mapping[str, Any], seed: int, repeat: int) -> str:
    blob = json.dumps([overrides, seed, repeat], sort_keys=True, default=str)
    return f"{prefix}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def expand(
    base: TrainingJob,
    grid: Mapping[str, Sequence[Any]] | None = None,
    *,
    cells: Sequence[Mapping[str, Any]] = (),
    seeds: Sequence[int] = (),
    repeats: int = 1,
    prefix: str | None = None,
) -> list[Cell]:
    """Every cell of the grid (see the module docstring), each with its validated job."""
    grid = dict(grid or {})
    for key, values in grid.items():
        check_key(key)
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ConfigError(
                f"parameter_grid.{key}: expected a non-empty list of values",
                hint=f"write {key} = [value, ...]",
            )
    for i, explicit in enumerate(cells):
        for key in explicit:
            check_key(key, where=f"cells[{i}]")
    if repeats < 1:
        raise ConfigError(f"repeats: {repeats} is not a positive number")
    keys = list(grid)
    combos: list[dict[str, Any]] = (
        [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*(list(grid[k]) for k in keys))
        ]
        if keys
        else ([] if cells else [{}])
    )
    combos += [dict(c) for c in cells]
    run_seeds = list(seeds) or [base.learning_config.seed]
    stem = prefix or base.job_id or "cell"
    out: list[Cell] = []
    for overrides in combos:
        for seed in run_seeds:
            for repeat in range(repeats):
                cell_id = _cell_id(stem, overrides, seed, repeat)
                job = apply_overrides(
                    base, {**overrides, "learning_config.seed": seed}, job_id=cell_id
                )
                out.append(Cell(cell_id, overrides, seed, repeat, job))
    return out

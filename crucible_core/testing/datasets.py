"""``check_dataset_source``: a DatasetSource streams plain rows, the same every time.

What it asserts (each failure names the call and the rule):

1. The object has ``iter_rows(spec)``
   (:class:`~crucible_core.contracts.DatasetSource`).
2. ``iter_rows`` returns an iterator (rows are streamed, not a list built in
   memory) yielding at least ``min_rows`` rows, within ``timeout``.
3. Every row is a mapping with string keys whose values msgspec can encode
   (datasets are hashed and printed as JSON).
4. Each row is a new object that does not change after it is yielded: a
   consumer that keeps rows (splitting, batching) must not see them change.
5. Reading again gives the same rows in the same order: the dataset hash,
   the splits and resumed runs depend on it.
6. When ``missing`` is given (a spec naming data that does not exist),
   reading it raises a :class:`~crucible_core.errors.CrucibleError`
   (``NotFound`` or ``ConfigError``), not a bare ``OSError``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

from crucible_core.contracts import DatasetSource
from crucible_core.errors import CrucibleError
from crucible_core.ir.training import DatasetSpec
from crucible_core.testing._guard import Calls, ConformanceError, require

__all__ = ["check_dataset_source"]


def _read(source: Any, spec: DatasetSpec) -> list[tuple[Any, Any]]:
    """``(row, a deep copy taken when it was yielded)`` for every row."""
    rows = source.iter_rows(spec)
    require(
        isinstance(rows, Iterator),
        f"iter_rows must return an iterator (rows are streamed), got {type(rows).__name__}",
    )
    return [(row, copy.deepcopy(row)) for row in rows]


def check_dataset_source(
    source: Any,
    spec: DatasetSpec,
    *,
    min_rows: int = 1,
    missing: DatasetSpec | None = None,
    timeout: float = 120.0,
) -> list[Mapping[str, Any]]:
    """Read ``spec`` through ``source`` twice and check the DatasetSource rules.

    Returns the rows, for the author's own assertions on their content.
    """
    require(
        isinstance(source, DatasetSource),
        "a dataset source needs iter_rows(spec) (crucible_core.contracts.DatasetSource)",
    )
    call = f"iter_rows({spec.uri!r})"
    with Calls(timeout) as calls:
        first = calls(call, "a source reads the rows of its spec", _read, source, spec)
        require(len(first) >= min_rows, f"{call} yielded {len(first)} rows, expected >= {min_rows}")
        for i, (row, _) in enumerate(first):
            require(
                isinstance(row, Mapping),
                f"{call}: row {i} must be a mapping, got {type(row).__name__}",
            )
            keys: list[Any] = list(row)  # pyright: ignore[reportUnknownArgumentType]
            bad = [k for k in keys if not isinstance(k, str)]
            require(not bad, f"{call}: row {i} has keys that are not strings: {bad!r}")
            try:
                msgspec.json.encode(dict(row))  # pyright: ignore[reportUnknownArgumentType]
            except (TypeError, msgspec.EncodeError) as exc:
                raise ConformanceError(
                    f"{call}: row {i} holds a value msgspec cannot encode ({exc}); rows are "
                    "plain data"
                ) from exc
        changed = [i for i, (row, seen) in enumerate(first) if row != seen]
        require(
            not changed and len({id(row) for row, _ in first}) == len(first),
            f"{call} yielded rows that changed after they were yielded (rows {changed[:5]}) or "
            "the same object twice: yield a new mapping per row",
        )
        second = calls(f"{call} a second time", "reading is repeatable", _read, source, spec)
        rows = [row for row, _ in first]
        again = [row for row, _ in second]
        if rows != again:
            at = next(
                (i for i, (a, b) in enumerate(zip(rows, again, strict=False)) if a != b),
                min(len(rows), len(again)),
            )
            raise ConformanceError(
                f"{call} gave different rows on a second read (first difference at row {at}; "
                f"{len(rows)} then {len(again)} rows): the dataset hash and splits need the "
                "same rows in the same order"
            )
        if missing is not None:
            bad_call = f"iter_rows({missing.uri!r})"
            _, exc = calls.attempt(
                bad_call, "missing data is a typed error", lambda: list(source.iter_rows(missing))
            )
            if not isinstance(exc, CrucibleError):
                what = "yielded rows" if exc is None else f"raised {type(exc).__name__}: {exc}"
                raise ConformanceError(
                    f"{bad_call} {what}; data that does not exist must raise "
                    "crucible_core.errors.NotFound or ConfigError (a one-line message, exit 2/4)"
                ) from exc
    return rows

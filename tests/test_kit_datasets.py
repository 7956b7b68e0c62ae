"""check_dataset_source passes a good source and names the rule each broken one breaks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from crucible_core.errors import NotFound
from crucible_core.ir import DatasetSpec
from crucible_core.testing import ConformanceError, check_dataset_source

ROWS = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]


class _Good:
    def iter_rows(self, spec: DatasetSpec) -> Iterator[Mapping[str, Any]]:
        for row in ROWS:
            yield dict(row)


def test_a_good_source_passes() -> None:
    missing = DatasetSpec(uri="absent.jsonl")
    assert check_dataset_source(_Good(), DatasetSpec(uri="memory:rows"), min_rows=5) == ROWS
    with pytest.raises(ConformanceError, match="yielded 5 rows, expected >= 6"):
        check_dataset_source(_Good(), DatasetSpec(uri="memory:rows"), min_rows=6)
    check_dataset_source(_TypedMissing(), DatasetSpec(uri="memory:rows"), missing=missing)


class _ReturnsList(_Good):
    def iter_rows(self, spec: DatasetSpec) -> Any:
        return [dict(r) for r in ROWS]


class _Empty(_Good):
    def iter_rows(self, spec: DatasetSpec) -> Iterator[Mapping[str, Any]]:
        yield from ()


class _NotMappings(_Good):
    def iter_rows(self, spec: DatasetSpec) -> Iterator[Any]:
        yield ("q", "a")


class _IntKeys(_Good):
    def iter_rows(self, spec: DatasetSpec) -> Iterator[Any]:
        yield {0: "q"}


class _Unencodable(_Good):
    def iter_rows(self, spec: DatasetSpec) -> Iterator[Any]:
        yield {"prompt": object()}


class _ReusesRow(_Good):
    def iter_rows(self, spec: DatasetSpec) -> Iterator[Mapping[str, Any]]:
        row: dict[str, Any] = {}
        for r in ROWS:
            row.clear()
            row.update(r)
            yield row


class _OrderChanges(_Good):
    """Reads in a different order each time (an unseeded shuffle, a set, a racy reader)."""

    reads = 0

    def iter_rows(self, spec: DatasetSpec) -> Iterator[Mapping[str, Any]]:
        self.reads += 1
        rows = [dict(r) for r in ROWS]
        yield from (rows if self.reads % 2 else rows[::-1])


class _Raises(_Good):
    def iter_rows(self, spec: DatasetSpec) -> Iterator[Mapping[str, Any]]:
        yield dict(ROWS[0])
        raise OSError("disk gone")


class _TypedMissing(_Good):
    def iter_rows(self, spec: DatasetSpec) -> Iterator[Mapping[str, Any]]:
        if "absent" in spec.uri:
            raise NotFound(f"{spec.uri}: no such file")
        yield from super().iter_rows(spec)


class _UntypedMissing(_Good):
    def iter_rows(self, spec: DatasetSpec) -> Iterator[Mapping[str, Any]]:
        if "absent" in spec.uri:
            raise FileNotFoundError(spec.uri)
        yield from super().iter_rows(spec)


class _SilentMissing(_Good):
    def iter_rows(self, spec: DatasetSpec) -> Iterator[Mapping[str, Any]]:
        if "absent" not in spec.uri:
            yield from super().iter_rows(spec)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (_ReturnsList(), "must return an iterator .*got list"),
        (_Empty(), "yielded 0 rows, expected >= 1"),
        (_NotMappings(), "row 0 must be a mapping, got tuple"),
        (_IntKeys(), "row 0 has keys that are not strings: \\[0\\]"),
        (_Unencodable(), "row 0 holds a value msgspec cannot encode"),
        (_ReusesRow(), "changed after they were yielded"),
        (_Raises(), "raised OSError: disk gone"),
        (_UntypedMissing(), "raised FileNotFoundError.*must raise crucible_core.errors.NotFound"),
        (_SilentMissing(), "yielded rows; data that does not exist must raise"),
        (object(), "a dataset source needs iter_rows"),
    ],
)
def test_broken_sources_fail_with_the_rule(source: Any, message: str) -> None:
    spec = DatasetSpec(uri="memory:rows")
    missing = DatasetSpec(uri="absent.jsonl")
    with pytest.raises(ConformanceError, match=message):
        check_dataset_source(source, spec, missing=missing)


def test_a_source_must_read_the_same_rows_again() -> None:
    with pytest.raises(ConformanceError, match=r"different rows on a second read .*at row 0"):
        check_dataset_source(_OrderChanges(), DatasetSpec(uri="memory:rows"))

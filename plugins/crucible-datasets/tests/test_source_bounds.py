"""Bounds on text sources: a huge line or a deeply nested row is a row error, not a crash.

Before these bounds a 10 MB JSONL line was read and decoded whole (memory
grows with the line), and a row nested 100,000 levels deep escaped as a
``RecursionError`` traceback.
"""

from __future__ import annotations

import gzip
import json
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import ConfigError, ValidationError
from crucible_core.ir.training import DatasetSpec
from crucible_datasets import load_rows, read_dataset
from crucible_datasets.sources import MAX_JSON_DEPTH, MAX_LINE_BYTES, ErrorLog, JsonlSource


def _spec(path: Path, **kw: Any) -> DatasetSpec:
    return DatasetSpec(uri=str(path), **kw)


def _nested(depth: int) -> bytes:
    # An object whose value is depth - 1 nested arrays: depth levels in all.
    return b'{"text": "x", "deep": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_ten_megabyte_line_is_refused_with_file_line_and_bound(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    huge = b'{"text": [' + b"0," * (5 * 1024 * 1024) + b"0]}"
    path.write_bytes(b'{"text": "a"}\n' + huge + b'\n{"text": "b"}\n')
    with pytest.raises(ValidationError) as info:
        load_rows(_spec(path))
    assert f"{path}:2: the line is longer than {MAX_LINE_BYTES} bytes" in info.value.message
    tracemalloc.start()
    try:
        loaded = read_dataset(_spec(path, on_error="skip"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert loaded.rows == [{"text": "a"}, {"text": "b"}]
    assert loaded.skipped == 1
    # Reading is bounded by the limit (one line-sized buffer and its copy); decoding the
    # line whole would need the 10 MB line, its stripped copy and a 5-million-item list.
    assert peak < 3 * MAX_LINE_BYTES, peak


def test_long_line_in_gzip_and_csv(tmp_path: Path) -> None:
    gz = tmp_path / "rows.jsonl.gz"
    with gzip.open(gz, "wb") as f:
        f.write(b'{"text": "' + b"y" * 300 + b'"}\n{"text": "ok"}\n')
    loaded = read_dataset(_spec(gz, on_error="skip", options={"max_line_bytes": 100}))
    assert loaded.rows == [{"text": "ok"}]
    assert f"{gz}:1: the line is longer than 100 bytes" in loaded.skip_reasons[0]
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text("prompt,completion\n" + "z" * 300 + ",c\na,b\n", encoding="utf-8")
    with pytest.raises(ValidationError, match=rf"{csv_path}:2: the line is longer than 100"):
        load_rows(_spec(csv_path, options={"max_line_bytes": 100}))
    assert load_rows(_spec(csv_path, on_error="skip", options={"max_line_bytes": 100})) == [
        {"prompt": "a", "completion": "b"}
    ]


@pytest.mark.parametrize("bad", [0, -1, "4MB", True, 1.5])
def test_max_line_bytes_option_is_checked(tmp_path: Path, bad: Any) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"options\.max_line_bytes must be a positive integer"):
        load_rows(_spec(path, options={"max_line_bytes": bad}))


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=12),
    limit=st.integers(14, 30),
    crlf=st.booleans(),
)
def test_lines_at_the_bound(lengths: list[int], limit: int, crlf: bool) -> None:
    # '{"text": "..."}' is 12 bytes plus the text: lines of every length around the limit.
    nl = b"\r\n" if crlf else b"\n"
    lines = [b'{"text": "' + b"t" * n + b'"}' for n in lengths]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_bytes(b"".join(line + nl for line in lines))
        log = ErrorLog("skip")
        spec = _spec(path, options={"max_line_bytes": limit})
        located = list(JsonlSource().iter_located(spec, log))
    # The newline does not count towards the limit; "\r" is part of the line.
    kept = [i for i, line in enumerate(lines) if len(line) + len(nl) - 1 <= limit]
    assert [row for _, row in located] == [{"text": "t" * lengths[i]} for i in kept]
    assert [loc.line for loc, _ in located] == [i + 1 for i in kept]
    assert log.skipped == len(lines) - len(kept)
    too_long = [f"{path}:{i + 1}: the line is longer" for i in range(len(lines)) if i not in kept]
    assert [m[: len(t)] for m, t in zip(log.messages, too_long, strict=True)] == too_long


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 100_000])
def test_deeply_nested_row_is_refused_with_file_line_and_bound(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"text": "a"}\n' + _nested(depth) + b"\n")
    with pytest.raises(ValidationError) as info:
        load_rows(_spec(path))
    assert (
        f"{path}:2: the row nests objects/arrays more than {MAX_JSON_DEPTH} levels deep"
        in info.value.message
    )
    assert load_rows(_spec(path, on_error="skip")) == [{"text": "a"}]


def test_row_at_the_depth_bound_is_read(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    # Many brackets but shallow (the cheap bound passes it to the exact check), and depth == limit.
    wide = json.dumps({"text": "w", "items": [[1]] * 200}).encode()
    path.write_bytes(wide + b"\n" + _nested(MAX_JSON_DEPTH) + b"\n")
    rows = load_rows(_spec(path))
    assert len(rows) == 2
    assert rows[0]["items"] == [[1]] * 200

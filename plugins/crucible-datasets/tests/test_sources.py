"""Sources: JSONL, JSON, CSV, Parquet, HF on disk; resolution; bad input."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import ConfigError, NotFound, ValidationError
from crucible_core.ir.training import DatasetSpec, FieldMap
from crucible_datasets import load_rows, read_dataset, resolve, stream_rows
from crucible_datasets.sources import ErrorLog, JsonlSource, iter_located

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=8,
)
rows_strategy = st.lists(
    st.dictionaries(st.text(max_size=8), json_values, max_size=4).map(lambda d: {"text": "x", **d}),
    min_size=1,
    max_size=15,
)


def _spec(path: Path | str, **kw: Any) -> DatasetSpec:
    return DatasetSpec(uri=str(path), **kw)


# -- JSONL -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, crlf=st.booleans(), blank_every=st.integers(0, 4))
def test_jsonl_round_trips_any_objects(
    rows: list[dict[str, Any]], crlf: bool, blank_every: int
) -> None:
    nl = "\r\n" if crlf else "\n"
    lines: list[str] = []
    for i, row in enumerate(rows):
        if blank_every and i % blank_every == 0:
            lines.append("   ")
        lines.append(json.dumps(row, ensure_ascii=False))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_bytes(nl.join(lines).encode("utf-8"))
        got = load_rows(_spec(path, fields=FieldMap(text="text")))
    assert got == rows


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.fixed_dictionaries({"text": st.text(max_size=20)}), min_size=2, max_size=12),
    data=st.data(),
)
def test_malformed_line_is_named_or_skipped_and_counted(
    rows: list[dict[str, str]], data: st.DataObject
) -> None:
    bad_at = data.draw(st.integers(0, len(rows)))
    bad = data.draw(
        st.sampled_from(['{"text": "unterminated', "not json", "[1, 2]", '"just a string"'])
    )
    lines = [json.dumps(r) for r in rows]
    lines.insert(bad_at, bad)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(ValidationError) as info:
            load_rows(_spec(path))
        assert f"{path}:{bad_at + 1}:" in info.value.message
        loaded = read_dataset(_spec(path, on_error="skip"))
    assert loaded.rows == rows
    assert loaded.skipped == 1
    assert f":{bad_at + 1}:" in loaded.skip_reasons[0]


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
    bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\x80", b"\xfe"]),
    lines_before=st.integers(0, 3),
)
def test_non_utf8_error_names_the_byte_offset(prefix: str, bad: bytes, lines_before: int) -> None:
    head = b"".join(json.dumps({"text": f"row {i}"}).encode() + b"\n" for i in range(lines_before))
    encoded_prefix = json.dumps(prefix)[:-1].encode("utf-8")  # open string, no closing quote
    line = b'{"text": ' + encoded_prefix + bad + b'"}\n'
    offset = len(head) + len(b'{"text": ') + len(encoded_prefix)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_bytes(head + line)
        with pytest.raises(ValidationError) as info:
            load_rows(_spec(path))
        message = info.value.message
        assert f"byte offset {offset} " in message, message
        assert f"{path}:{lines_before + 1}:" in message
        assert f"0x{bad[0]:02x}" in message
        if lines_before:
            loaded = read_dataset(_spec(path, on_error="skip"))
            assert loaded.skipped == 1
            assert len(loaded.rows) == lines_before


def test_jsonl_bom_gzip_and_non_object(tmp_path: Path) -> None:
    rows = [{"text": "a"}, {"text": "é"}]
    plain = tmp_path / "bom.jsonl"
    plain.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    assert load_rows(_spec(plain)) == rows
    gz = tmp_path / "rows.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert load_rows(_spec(gz)) == rows
    assert resolve(_spec(gz)).name == "jsonl"


def test_empty_and_all_bad_datasets_are_clear_errors(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="the dataset is empty"):
        load_rows(_spec(empty))
    bad = write_jsonl(["nope", "{"], name="bad.jsonl")
    with pytest.raises(ConfigError, match=r"every row was bad \(2 skipped\)"):
        load_rows(_spec(bad, on_error="skip"))


def test_limit_stops_reading(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl([{"text": str(i)} for i in range(10)] + ["broken"])
    assert [r["text"] for r in load_rows(_spec(path, limit=3))] == ["0", "1", "2"]


def test_iter_rows_contract(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl([{"text": "a"}, "bad", {"text": "b"}])
    source = JsonlSource()
    assert list(source.iter_rows(_spec(path, on_error="skip"))) == [{"text": "a"}, {"text": "b"}]
    with pytest.raises(ValidationError, match=r":2: malformed JSON"):
        list(source.iter_rows(_spec(path)))


# -- JSON array --------------------------------------------------------------------------------


def test_json_array_and_split_object(tmp_path: Path) -> None:
    rows = [{"instruction": "Say hi", "input": "", "output": "hi"}]
    arr = tmp_path / "alpaca.json"
    arr.write_text(json.dumps(rows), encoding="utf-8")
    assert load_rows(_spec(arr, options={"preset": "alpaca"})) == rows
    obj = tmp_path / "splits.json"
    obj.write_text(json.dumps({"train": rows, "test": [{"text": "t"}]}), encoding="utf-8")
    assert load_rows(_spec(obj, split="test")) == [{"text": "t"}]
    with pytest.raises(ConfigError, match="set split to one of its keys: test, train"):
        load_rows(_spec(obj, split="nope"))
    jsonl_named_json = tmp_path / "lines.json"
    jsonl_named_json.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(ValidationError) as info:
        load_rows(_spec(jsonl_named_json))
    assert "looks like JSON Lines" in str(info.value)


# -- CSV -----------------------------------------------------------------------------------------

cell = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=12
)


@settings(max_examples=60, deadline=None)
@given(
    header=st.lists(
        st.text(alphabet="abcdefghij_", min_size=1, max_size=6), min_size=1, max_size=4, unique=True
    ),
    data=st.data(),
    delimiter=st.sampled_from([",", ";", "\t"]),
)
def test_csv_round_trips_quoted_cells(
    header: list[str], data: st.DataObject, delimiter: str
) -> None:
    body = data.draw(
        st.lists(st.lists(cell, min_size=len(header), max_size=len(header)), min_size=1, max_size=8)
    )
    # A row of one empty cell is a blank line to csv; keep rows non-blank.
    body = [r for r in body if any(r) or len(r) > 1] or [["x"] * len(header)]
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows(body)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.csv"
        path.write_text(buf.getvalue(), encoding="utf-8")
        spec = _spec(path, fields=FieldMap(text=header[0]), options={"delimiter": delimiter})
        got = load_rows(spec)
    assert got == [dict(zip(header, r, strict=True)) for r in body]


def test_ragged_csv_row_is_named_and_skippable(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(
        'prompt,completion\n"a,b",c\nonly-one\nx,y,z\n"multi\nline",ok\n', encoding="utf-8"
    )
    with pytest.raises(ValidationError) as info:
        load_rows(_spec(path))
    assert (
        f"{path}:3: ragged row: 1 fields, the header has 2 (prompt, completion)"
        in info.value.message
    )
    loaded = read_dataset(_spec(path, on_error="skip"))
    assert loaded.rows == [
        {"prompt": "a,b", "completion": "c"},
        {"prompt": "multi\nline", "completion": "ok"},
    ]
    assert loaded.skipped == 2
    assert ":4: ragged row: 3 fields" in loaded.skip_reasons[1]


def test_csv_non_utf8_header_problems_and_headerless(tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text\ncaf\xe9\nok\n".encode("latin-1"))
    with pytest.raises(
        ValidationError, match=r"latin.csv:2: invalid UTF-8 byte 0xe9 at byte offset 8 "
    ):
        load_rows(_spec(latin))
    assert read_dataset(_spec(latin, on_error="skip")).rows == [{"text": "ok"}]
    dup = tmp_path / "dup.csv"
    dup.write_text("a,a\n1,2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="repeats the column 'a'"):
        load_rows(_spec(dup))
    # MMLU's own CSV files have no header row.
    mmlu = tmp_path / "anatomy_test.csv"
    mmlu.write_text('"What is 2+2?",3,4,5,6,B\n', encoding="utf-8")
    rows = load_rows(_spec(mmlu, options={"header": False, "preset": "mmlu"}))
    assert rows == [
        {f"column_{i}": v for i, v in enumerate(["What is 2+2?", "3", "4", "5", "6", "B"])}
    ]
    named = load_rows(
        _spec(
            mmlu, options={"columns": ["question", "A", "B", "C", "D", "answer"], "preset": "mmlu"}
        )
    )
    assert named[0]["answer"] == "B"
    tsv = tmp_path / "x.tsv"
    tsv.write_text("text\tlabel\na,b\tc\n", encoding="utf-8")
    assert load_rows(_spec(tsv)) == [{"text": "a,b", "label": "c"}]


# -- Parquet and Hugging Face ---------------------------------------------------------------------


def test_parquet_file_directory_and_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "n": i} for i in range(2500)]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table.slice(0, 1200), tmp_path / "part-0.parquet")
    pq.write_table(table.slice(1200), tmp_path / "part-1.parquet")
    assert load_rows(_spec(tmp_path / "part-0.parquet")) == rows[:1200]
    assert load_rows(_spec(f"parquet:{tmp_path}")) == rows
    only = load_rows(_spec(f"parquet:{tmp_path}", options={"columns": ["prompt", "completion"]}))
    assert only[5] == {"prompt": "q5", "completion": "a5"}
    with pytest.raises(ConfigError, match="available columns: prompt, completion, n"):
        load_rows(_spec(tmp_path / "part-0.parquet", options={"columns": ["nope"]}))
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a readable Parquet file"):
        load_rows(_spec(fake))


def test_hf_saved_to_disk_dataset_and_dict(tmp_path: Path) -> None:
    import datasets

    train = datasets.Dataset.from_dict({"prompt": ["a", "b"], "completion": ["1", "2"]})
    test = datasets.Dataset.from_dict({"prompt": ["c"], "completion": ["3"]})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    train.save_to_disk(str(tmp_path / "one"))
    assert resolve(_spec(tmp_path / "dd")).name == "hf-disk"
    assert load_rows(_spec(tmp_path / "dd")) == [
        {"prompt": "a", "completion": "1"},
        {"prompt": "b", "completion": "2"},
    ]
    assert load_rows(_spec(f"hf-disk:{tmp_path / 'dd'}", split="test")) == [
        {"prompt": "c", "completion": "3"}
    ]
    assert len(load_rows(_spec(f"hf-disk:{tmp_path / 'one'}"))) == 2
    with pytest.raises(ConfigError, match="available splits: train, test"):
        load_rows(_spec(f"hf-disk:{tmp_path / 'dd'}", split="validation"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="not a dataset saved with save_to_disk"):
        load_rows(_spec(f"hf-disk:{tmp_path / 'plain'}"))


def test_hf_local_repo_layout_gsm8k(tmp_path: Path) -> None:
    """A downloaded GSM8K repo: main/{train,test}-*.parquet, read by split without network."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    main = tmp_path / "gsm8k" / "main"
    main.mkdir(parents=True)
    rows = [{"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}]
    pq.write_table(pa.Table.from_pylist(rows * 3), main / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows), main / "test-00000-of-00001.parquet")
    spec = _spec(f"hf:{tmp_path / 'gsm8k' / 'main'}", split="test", options={"preset": "gsm8k"})
    assert load_rows(spec) == rows
    assert resolve(_spec(tmp_path / "gsm8k")).name == "hf"
    assert len(load_rows(_spec(f"hf:{tmp_path / 'gsm8k'}", options={"preset": "gsm8k"}))) == 3
    with pytest.raises(ConfigError, match="cannot read it as Hugging Face data files"):
        load_rows(_spec(f"hf:{tmp_path / 'gsm8k'}", split="nope", options={"preset": "gsm8k"}))


def test_hub_name_offline_says_how_to_use_local_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    for uri in ("hf:openai/gsm8k", "openai/gsm8k"):
        with pytest.raises(ConfigError) as info:
            load_rows(_spec(uri))
        text = str(info.value)
        assert "never downloads" in text
        assert "huggingface-cli download openai/gsm8k --repo-type dataset" in text
        assert 'uri = "hf:data/gsm8k"' in text


def test_hub_name_already_in_the_local_cache_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HF cache layout (refs/main -> snapshots/<rev>/...), as a download leaves it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path / "hub" / "datasets--someone--tiny"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev, encoding="utf-8")
    data = repo / "snapshots" / rev / "data"
    data.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([{"text": "cached"}]), data / "train-00000-of-00001.parquet"
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    assert load_rows(_spec("hf:someone/tiny")) == [{"text": "cached"}]


# -- resolution ----------------------------------------------------------------------------------


def test_resolution_by_scheme_suffix_and_format(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    path = write_jsonl([{"text": "a"}])
    renamed = tmp_path / "data.txt"
    renamed.write_bytes(path.read_bytes())
    assert resolve(_spec(path)).name == "jsonl"
    assert resolve(_spec(f"file://{path}")).name == "jsonl"
    assert resolve(_spec(f"jsonl:{renamed}")).uri == f"jsonl:{renamed}"
    assert load_rows(_spec(renamed, format="jsonl")) == [{"text": "a"}]
    assert resolve(_spec("sample:chat")).sample is not None
    with pytest.raises(ConfigError, match=r"cannot tell the format from the suffix '\.txt'"):
        resolve(_spec(renamed))
    with pytest.raises(ConfigError, match="unknown URI scheme 'ftpx'"):
        resolve(_spec("ftpx:thing"))
    with pytest.raises(ConfigError, match="remote URIs are not read"):
        resolve(_spec("https://example.com/data.jsonl"))
    with pytest.raises(NotFound, match="no such file or directory"):
        resolve(_spec(tmp_path / "missing.bin"))
    with pytest.raises(NotFound, match="no such file"):
        load_rows(_spec(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="unknown format 'xml'"):
        resolve(_spec(path, format="xml"))
    with pytest.raises(NotFound, match="no sample named 'nope'"):
        resolve(_spec("sample:nope"))


def test_iter_located_gives_lines(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl([{"text": "a"}, {"text": "b"}])
    located = list(iter_located(_spec(path), ErrorLog()))
    assert [str(loc) for loc, _ in located] == [f"{path}:1", f"{path}:2"]


def test_stream_rows_reports_source_kind_columns(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl([{"prompt": "p", "completion": "c", "extra": 1}])
    info: dict[str, Any] = {}
    assert list(stream_rows(_spec(path), info=info)) == [
        {"prompt": "p", "completion": "c", "extra": 1}
    ]
    assert info == {
        "source": f"jsonl:{path}",
        "kind": "completion",
        "columns": ["prompt", "completion", "extra"],
    }

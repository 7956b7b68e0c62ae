"""Dataset sources: read rows from JSONL, JSON, CSV, Parquet and Hugging Face data on disk.

Every source satisfies :class:`crucible_core.contracts.DatasetSource`
(``iter_rows(spec)``) and also offers ``iter_located(spec, errors)``, which
yields each row with its :class:`Location` (``file:line`` or ``file[row i]``)
so that a bad row can be named precisely. Rows are streamed: nothing reads a
whole file into memory except the JSON-array source, whose format requires it.

Row-level problems (a malformed JSONL line, a ragged CSV row, bytes that are
not UTF-8) go through an :class:`ErrorLog`: with ``on_error = "raise"`` they
raise a :class:`~crucible_core.errors.ValidationError` naming the place; with
``on_error = "skip"`` the row is skipped and counted. File-level problems
(missing file, not Parquet, a hub name offline) always raise.

Text formats are read with bounds, so one bad line cannot exhaust memory or
the stack: a JSONL or CSV line longer than :data:`MAX_LINE_BYTES` (4 MiB;
``options.max_line_bytes`` changes it) is refused as a row error without being
held in memory whole, and a JSONL row nested more than :data:`MAX_JSON_DEPTH`
levels deep is refused the same way (both name ``file:line`` and the bound).

:func:`resolve` maps a ``DatasetSpec.uri`` (and ``format``) to a source.
"""

from __future__ import annotations

import csv
import gzip
import importlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, cast

import msgspec

from crucible_core.errors import ConfigError, NotFound, ValidationError
from crucible_datasets.registry import SAMPLES, SOURCES, SampleInfo

if TYPE_CHECKING:
    from crucible_core.ir import DatasetSpec

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_LINE_BYTES",
    "CsvSource",
    "ErrorLog",
    "HfDiskSource",
    "HfSource",
    "JsonSource",
    "JsonlSource",
    "Location",
    "ParquetSource",
    "Resolved",
    "SampleSource",
    "iter_located",
    "iter_resolved",
    "resolve",
    "sample_info",
    "sample_path",
]

Row = dict[str, Any]
_BOM = b"\xef\xbb\xbf"
#: The longest line (in bytes, newline excluded) a JSONL or CSV source reads.
MAX_LINE_BYTES = 4 * 1024 * 1024
#: How many levels of objects and arrays a JSONL row may nest.
MAX_JSON_DEPTH = 100
_DRAIN = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Location:
    """Where a row came from: ``file:line`` for text formats, ``file[row i]`` otherwise."""

    file: str
    line: int | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        if self.index is not None:
            return f"{self.file}[row {self.index}]"
        return self.file


@dataclass
class ErrorLog:
    """Decides what a bad row does: raise (default) or skip and count.

    ``skipped`` counts skipped rows; ``messages`` keeps the first ``keep``
    reasons so a run manifest can say why rows were dropped.
    """

    on_error: Literal["raise", "skip"] = "raise"
    keep: int = 20
    skipped: int = 0
    messages: list[str] = field(default_factory=list[str])

    def reject(self, error: ValidationError) -> None:
        """Raise ``error``, or (``on_error = "skip"``) count it and carry on."""
        if self.on_error == "raise":
            raise error
        self.skipped += 1
        if len(self.messages) < self.keep:
            self.messages.append(error.message)


def _row_error(loc: Location | str, what: str, *, hint: str | None = None) -> ValidationError:
    return ValidationError(
        f"{loc}: {what}",
        path="$",
        hint=hint or 'fix the row, or set on_error = "skip" to skip bad rows and count them',
        location=str(loc),
    )


# -- byte-level helpers ---------------------------------------------------------


def _is_gzip(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def _open_binary(path: Path) -> IO[bytes]:
    try:
        if _is_gzip(path):
            return cast(IO[bytes], gzip.open(path, "rb"))
        return path.open("rb")
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file", hint="check the dataset uri") from None
    except IsADirectoryError:
        raise ConfigError(
            f"{path}: is a directory, not a file",
            hint="point at a file, or use hf:DIR / parquet:DIR for a directory of files",
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def _utf8_error(line: bytes, start: int, exc: UnicodeDecodeError | None = None) -> tuple[int, int]:
    """(absolute byte offset, byte value) of the first invalid UTF-8 byte in ``line``."""
    if exc is None:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as found:
            exc = found
        else:  # pragma: no cover - callers only ask when decoding failed
            return (start, 0)
    return (start + exc.start, line[exc.start])


def _utf8_message(path: Path, lineno: int, offset: int, byte: int) -> str:
    where = "uncompressed byte offset" if _is_gzip(path) else "byte offset"
    return f"invalid UTF-8 byte 0x{byte:02x} at {where} {offset} (line {lineno})"


_UTF8_HINT = (
    "the file is not UTF-8; re-encode it (e.g. `iconv -f latin1 -t utf-8 in > out`), "
    'or set on_error = "skip" to skip the bad rows'
)


def _lines(f: IO[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, int, bytes | None]]:
    """(line number from 1, byte offset of the line, line bytes) for each line.

    A line longer than ``limit`` bytes (newline excluded) comes as ``None``: it
    is read past in chunks, never held whole.
    """
    offset = 0
    lineno = 0
    while raw := f.readline(limit + 1):
        lineno += 1
        size = len(raw)
        if size > limit and not raw.endswith(b"\n"):
            while (chunk := f.readline(_DRAIN)) and not chunk.endswith(b"\n"):
                size += len(chunk)
            size += len(chunk)
            yield lineno, offset, None
            offset += size
            continue
        line = raw[3:] if lineno == 1 and raw.startswith(_BOM) else raw
        yield lineno, offset + size - len(line), line
        offset += size


def _too_long(where: str, limit: int) -> ValidationError:
    return _row_error(
        where,
        f"the line is longer than {limit} bytes (the limit)",
        hint="rows are single examples; raise options.max_line_bytes if this one is real, "
        'or set on_error = "skip" to skip such lines',
    )


def _max_line_bytes(spec: DatasetSpec) -> int:
    value = spec.options.get("max_line_bytes", MAX_LINE_BYTES)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"dataset_spec.options.max_line_bytes must be a positive integer, got {value!r}",
            hint=f"the default is {MAX_LINE_BYTES}",
        )
    return value


def _too_deep(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests objects/arrays more than ``limit`` levels (iterative, no recursion)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            values: Any = cast(dict[str, Any], node).values()
        elif isinstance(node, list):
            values = node
        else:
            continue
        stack.extend((v, depth + 1) for v in cast(Any, values) if isinstance(v, dict | list))
    return False


# -- sources ---------------------------------------------------------------------


class _FileSource:
    """Shared behaviour: ``iter_rows`` strips locations and raises on the first bad row."""

    name = "file"

    def iter_located(self, spec: DatasetSpec, errors: ErrorLog) -> Iterator[tuple[Location, Row]]:
        raise NotImplementedError

    def iter_rows(self, spec: DatasetSpec) -> Iterator[Mapping[str, Any]]:
        """The rows of ``spec`` (the ``DatasetSource`` contract); bad rows follow ``on_error``."""
        log = ErrorLog(spec.on_error)
        for _, row in self.iter_located(spec, log):
            yield row


class JsonlSource(_FileSource):
    """JSON Lines: one JSON object per line; blank lines are ignored; ``.gz`` is read as gzip."""

    name = "jsonl"

    def iter_located(self, spec: DatasetSpec, errors: ErrorLog) -> Iterator[tuple[Location, Row]]:
        path = Path(_path_of(spec))
        yield from read_jsonl(path, errors, max_line_bytes=_max_line_bytes(spec))


def read_jsonl(
    path: Path, errors: ErrorLog, *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[Location, Row]]:
    """Stream ``(location, row)`` from a JSONL file; see :class:`JsonlSource`.

    A line over ``max_line_bytes`` or a row nested over :data:`MAX_JSON_DEPTH`
    levels is a row error (it follows ``errors``), named by ``file:line``.
    """
    decode = msgspec.json.Decoder().decode
    name = str(path)
    with _open_binary(path) as f:
        for lineno, start, line in _lines(f, max_line_bytes):
            if line is None:
                errors.reject(_too_long(f"{name}:{lineno}", max_line_bytes))
                continue
            stripped = line.strip()
            if not stripped:
                continue
            try:
                obj = decode(stripped)
            except RecursionError:
                obj = None  # deeper than the decoder's own limit: reported below
                deep = True
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    offset, byte = _utf8_error(line, start, bad)
                    errors.reject(
                        _row_error(
                            f"{name}:{lineno}",
                            _utf8_message(path, lineno, offset, byte),
                            hint=_UTF8_HINT,
                        )
                    )
                    continue
                errors.reject(
                    _row_error(
                        f"{name}:{lineno}",
                        f"malformed JSON ({exc})",
                        hint="each line must be one JSON object; fix the line or "
                        'set on_error = "skip"',
                    )
                )
                continue
            else:
                # Cheap upper bound first: most rows have far fewer brackets than the limit.
                deep = stripped.count(b"[") + stripped.count(b"{") > MAX_JSON_DEPTH and _too_deep(
                    obj, MAX_JSON_DEPTH
                )
            if deep:
                errors.reject(
                    _row_error(
                        f"{name}:{lineno}",
                        f"the row nests objects/arrays more than {MAX_JSON_DEPTH} levels deep "
                        "(the limit)",
                        hint='flatten the row, or set on_error = "skip" to skip such rows',
                    )
                )
                continue
            if not isinstance(obj, dict):
                errors.reject(
                    _row_error(
                        f"{name}:{lineno}",
                        f"expected a JSON object, got {_json_kind(obj)}",
                        hint='each line must be one JSON object like {"messages": [...]}',
                    )
                )
                continue
            yield Location(name, line=lineno), cast(Row, obj)


def _json_kind(obj: Any) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if obj is None:
        return "null"
    return type(obj).__name__


class JsonSource(_FileSource):
    """A JSON document holding an array of objects (or ``{split: [...]}``); read whole."""

    name = "json"

    def iter_located(self, spec: DatasetSpec, errors: ErrorLog) -> Iterator[tuple[Location, Row]]:
        path = Path(_path_of(spec))
        with _open_binary(path) as f:
            data = f.read()
        if data.startswith(_BOM):
            data = data[3:]
        try:
            doc = msgspec.json.decode(data)
        except UnicodeDecodeError:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as bad:
                line = data.count(b"\n", 0, bad.start) + 1
                raise ValidationError(
                    f"{path}: {_utf8_message(path, line, bad.start, data[bad.start])}",
                    hint=_UTF8_HINT,
                ) from None
            raise  # pragma: no cover - msgspec only raises this for bad UTF-8
        except msgspec.DecodeError as exc:
            if path.name.endswith((".json", ".json.gz")) and _looks_like_jsonl(data):
                hint = "this looks like JSON Lines: rename it to .jsonl or set format = 'jsonl'"
            else:
                hint = "fix the JSON syntax"
            raise ValidationError(f"{path}: malformed JSON ({exc})", hint=hint) from None
        if isinstance(doc, dict):
            table = cast(dict[str, Any], doc)
            split = spec.split or ("train" if "train" in table else None)
            if split is None or split not in table:
                raise ConfigError(
                    f"{path}: the document is an object; expected an array of rows",
                    hint=f"set split to one of its keys: {', '.join(sorted(table)) or 'none'}",
                )
            doc = table[split]
        if not isinstance(doc, list):
            raise ConfigError(
                f"{path}: expected an array of objects, got {_json_kind(doc)}",
                hint="write the rows as a JSON array, or as JSON Lines (.jsonl)",
            )
        for i, obj in enumerate(cast(list[Any], doc)):
            loc = Location(str(path), index=i)
            if not isinstance(obj, dict):
                errors.reject(_row_error(loc, f"expected a JSON object, got {_json_kind(obj)}"))
                continue
            yield loc, cast(Row, obj)


def _looks_like_jsonl(data: bytes) -> bool:
    first = data.lstrip()[:1]
    return first == b"{" and data.strip().count(b"\n") > 0


class CsvSource(_FileSource):
    """CSV (or TSV) with a header row; every value is a string.

    Options (``DatasetSpec.options``): ``delimiter`` (default ``,``; ``\\t`` for
    ``.tsv``), ``header`` (default true), ``columns`` (names for a file without
    a header, e.g. MMLU's ``question,A,B,C,D,answer``; without it they are
    ``column_0``...). A row whose field count differs from the header's is
    ragged: an error naming ``file:line``, or skipped with ``on_error = "skip"``.
    """

    name = "csv"

    def iter_located(self, spec: DatasetSpec, errors: ErrorLog) -> Iterator[tuple[Location, Row]]:
        path = Path(_path_of(spec))
        opts = spec.options
        tsv = ".tsv" in path.suffixes or spec.uri.startswith("tsv:")
        delimiter = str(opts.get("delimiter", "\t" if tsv else ","))
        if len(delimiter) != 1:
            raise ConfigError(
                f"{path}: options.delimiter must be one character, got {delimiter!r}",
                hint='e.g. options = {delimiter = ";"}',
            )
        has_header = bool(opts.get("header", True))
        names = opts.get("columns")
        name = str(path)
        with _open_binary(path) as f:
            feed = _CsvFeed(path, f, errors, _max_line_bytes(spec))
            reader = csv.reader(feed, delimiter=delimiter, strict=True)
            header: list[str] | None = None
            if names is not None:
                if not isinstance(names, list) or not all(
                    isinstance(n, str) for n in cast(list[Any], names)
                ):
                    raise ConfigError(
                        f"{path}: options.columns must be a list of column names",
                        hint="e.g. options = {columns = "
                        '["question", "A", "B", "C", "D", "answer"]}',
                    )
                header = list(cast(list[str], names))
            while True:
                feed.start_record()
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    errors.reject(_row_error(f"{name}:{feed.record_start}", f"bad CSV ({exc})"))
                    continue
                lineno = feed.record_start
                if not values:
                    continue
                if header is None:
                    if has_header:
                        header = [v.strip() for v in values]
                        _check_header(path, lineno, header)
                        continue
                    header = [f"column_{i}" for i in range(len(values))]
                if len(values) != len(header):
                    errors.reject(
                        _row_error(
                            f"{name}:{lineno}",
                            f"ragged row: {len(values)} fields, the header has {len(header)} "
                            f"({', '.join(header)})",
                            hint="quote fields that contain the delimiter, or fix the row; "
                            'on_error = "skip" skips ragged rows',
                        )
                    )
                    continue
                yield Location(name, line=lineno), dict(zip(header, values, strict=True))


class _CsvFeed:
    """Text lines for ``csv.reader``, decoded one by one so a bad byte is named exactly.

    ``record_start`` is the file line on which the current CSV record began
    (a quoted field may span lines).
    """

    def __init__(
        self, path: Path, f: IO[bytes], errors: ErrorLog, limit: int = MAX_LINE_BYTES
    ) -> None:
        self.path = path
        self.errors = errors
        self.limit = limit
        self._lines = _lines(f, limit)
        self.record_start = 0
        self._mark = True

    def start_record(self) -> None:
        self._mark = True

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            lineno, start, line = next(self._lines)
            if line is None:
                self.errors.reject(_too_long(f"{self.path}:{lineno}", self.limit))
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as bad:
                offset, byte = _utf8_error(line, start, bad)
                self.errors.reject(
                    _row_error(
                        f"{self.path}:{lineno}",
                        _utf8_message(self.path, lineno, offset, byte),
                        hint=_UTF8_HINT,
                    )
                )
                continue
            if self._mark:
                self.record_start = lineno
                self._mark = False
            return text


def _check_header(path: Path, lineno: int, header: list[str]) -> None:
    seen: set[str] = set()
    for col in header:
        if not col:
            raise ConfigError(
                f"{path}:{lineno}: the header has an empty column name",
                hint="name every column, or set options.header = false and options.columns",
            )
        if col in seen:
            raise ConfigError(
                f"{path}:{lineno}: the header repeats the column {col!r}",
                hint="give every column a distinct name",
            )
        seen.add(col)


class ParquetSource(_FileSource):
    """Parquet: one file, or every ``*.parquet`` under a directory (sorted); streamed by batch.

    Option ``columns``: read only these columns.
    """

    name = "parquet"

    def iter_located(self, spec: DatasetSpec, errors: ErrorLog) -> Iterator[tuple[Location, Row]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(_path_of(spec))
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".parquet", ".pq"))
            if not files:
                raise ConfigError(
                    f"{path}: the directory holds no .parquet files",
                    hint="point at a .parquet file or a directory that contains some",
                )
        elif not path.exists():
            raise NotFound(f"{path}: no such file", hint="check the dataset uri")
        else:
            files = [path]
        columns = spec.options.get("columns")
        if columns is not None and not isinstance(columns, list):
            raise ConfigError(
                f"{path}: options.columns must be a list of column names",
                hint='e.g. options = {columns = ["prompt", "completion"]}',
            )
        for file in files:
            try:
                pf = pq.ParquetFile(file)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ConfigError(
                    f"{file}: not a readable Parquet file ({exc})",
                    hint="check the file, or set format to the file's real format",
                ) from None
            if columns is not None:
                have = pf.schema_arrow.names
                missing = [c for c in cast(list[Any], columns) if c not in have]
                if missing:
                    raise ConfigError(
                        f"{file}: options.columns names missing column(s) "
                        f"{', '.join(map(str, missing))}",
                        hint=f"available columns: {', '.join(have)}",
                    )
            index = 0
            name = str(file)
            for batch in pf.iter_batches(batch_size=1024, columns=cast(list[str] | None, columns)):
                for row in batch.to_pylist():
                    yield Location(name, index=index), row
                    index += 1


def _is_saved_to_disk(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_dict.json").exists()
        or ((path / "state.json").exists() and (path / "dataset_info.json").exists())
    )


def _choose_split(available: Sequence[str], wanted: str | None, where: str) -> str:
    if wanted is not None:
        if wanted in available:
            return wanted
        raise ConfigError(
            f"{where}: no split {wanted!r}",
            hint=f"available splits: {', '.join(available)}",
        )
    if "train" in available:
        return "train"
    if len(available) == 1:
        return available[0]
    raise ConfigError(
        f"{where}: holds several splits and none is 'train'",
        hint=f"set split to one of: {', '.join(available)}",
    )


def _iter_columnar(
    batches: Iterator[Mapping[str, list[Any]]], name: str
) -> Iterator[tuple[Location, Row]]:
    index = 0
    for batch in batches:
        columns = list(batch)
        if not columns:
            continue
        for values in zip(*(batch[c] for c in columns), strict=True):
            yield Location(name, index=index), dict(zip(columns, values, strict=True))
            index += 1


class HfDiskSource(_FileSource):
    """A Hugging Face ``Dataset``/``DatasetDict`` saved with ``save_to_disk`` (memory-mapped).

    For a ``DatasetDict``, ``split`` picks the split (default ``train``).
    """

    name = "hf-disk"

    def iter_located(self, spec: DatasetSpec, errors: ErrorLog) -> Iterator[tuple[Location, Row]]:
        path = Path(_path_of(spec)).expanduser()
        if not path.exists():
            raise NotFound(f"{path}: no such directory", hint="check the dataset uri")
        yield from _iter_saved(path, spec.split)


def _iter_saved(path: Path, split: str | None) -> Iterator[tuple[Location, Row]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"{path}: not a dataset saved with save_to_disk ({exc})",
            hint="use hf:DIR for a directory of data files (parquet/jsonl/csv), "
            "or save the dataset with Dataset.save_to_disk(DIR)",
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        chosen = _choose_split([str(k) for k in loaded], split, str(path))
        ds = loaded[chosen]
        name = f"{path}[{chosen}]"
    else:
        ds = cast(Any, loaded)
        name = str(path)
    batches = cast(Iterator[Mapping[str, list[Any]]], ds.iter(batch_size=1000))
    yield from _iter_columnar(batches, name)


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _hub_cache_snapshot(name: str) -> Path | None:
    """The local Hugging Face cache's snapshot of dataset ``name``, if it was downloaded before."""
    if not _HUB_NAME.match(name):
        return None
    try:
        from huggingface_hub import snapshot_download

        # Read the variable now: huggingface_hub reads it once, at import.
        cache = os.environ.get("HF_HUB_CACHE") or None
        found = snapshot_download(name, repo_type="dataset", local_files_only=True, cache_dir=cache)
    except Exception:  # not cached (or no huggingface_hub): the caller explains what to do
        return None
    return Path(found)


def hub_offline_error(uri: str, name: str) -> ConfigError:
    """The error for a Hub name that is not on disk: how to point at local files instead."""
    short = name.rsplit("/", 1)[-1] or "dataset"
    return ConfigError(
        f"{uri}: {name!r} is not a local path nor in the Hugging Face cache, and crucible "
        "never downloads datasets at run time",
        hint=f"download it once where there is network access "
        f"(`huggingface-cli download {name} --repo-type dataset --local-dir data/{short}`), "
        f'then set uri = "hf:data/{short}" (a directory of parquet/jsonl/csv files; '
        f'options.config picks a subset) or point at one file, e.g. "data/{short}/train.jsonl"; '
        'a dataset saved with save_to_disk loads with uri = "hf-disk:DIR"',
    )


class HfSource(_FileSource):
    """Hugging Face data files on disk, read with ``datasets`` (streaming, no cache copy).

    The target is a directory laid out like a Hub dataset repo (``data/train-*.parquet``,
    ``main/test-*.parquet``, ``train.jsonl`` ...), a dataset saved with
    ``save_to_disk``, a single data file, or a Hub name that is already in the local
    Hugging Face cache. ``split`` picks the split (default ``train``);
    ``options.config`` picks a subset (``main`` for GSM8K). Nothing is downloaded:
    a Hub name that is not on disk is an error that says how to get the files.
    """

    name = "hf"

    def iter_located(self, spec: DatasetSpec, errors: ErrorLog) -> Iterator[tuple[Location, Row]]:
        target = _path_of(spec)
        path = Path(target).expanduser()
        if not path.exists():
            cached = _hub_cache_snapshot(target)
            if cached is None:
                raise hub_offline_error(spec.uri, target)
            path = cached
        if path.is_file():
            sub = _source_for_suffix(path)
            if sub is None:
                raise ConfigError(
                    f"{path}: cannot tell the file's format from its suffix",
                    hint="use a .jsonl, .json, .csv or .parquet file",
                )
            from crucible_core.ir import DatasetSpec as _Spec
            from crucible_core.ir import convert

            raw = msgspec.to_builtins(spec)
            raw["uri"] = str(path)
            raw["format"] = sub
            yield from _instantiate(sub).iter_located(convert(raw, _Spec), errors)
            return
        if _is_saved_to_disk(path):
            yield from _iter_saved(path, spec.split)
            return
        yield from _iter_hf_files(path, spec)


def _iter_hf_files(path: Path, spec: DatasetSpec) -> Iterator[tuple[Location, Row]]:
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    config = spec.options.get("config")
    split = spec.split or "train"
    try:
        ds = datasets.load_dataset(
            str(path),
            name=cast(str | None, config),
            split=split,
            streaming=True,
        )
    except (ValueError, FileNotFoundError, DatasetNotFoundError) as exc:
        raise ConfigError(
            f"{path}: cannot read it as Hugging Face data files (split {split!r}"
            + (f", config {config!r}" if config else "")
            + f"): {exc}",
            hint="check split and options.config against the files in the directory",
        ) from None
    name = f"{path}[{split}]"
    for index, row in enumerate(cast(Any, ds)):
        yield Location(name, index=index), cast(Row, row)


class SampleSource(_FileSource):
    """A sample shipped with this package: ``sample:chat``, ``sample:gsm8k``, ..."""

    name = "sample"

    def iter_located(self, spec: DatasetSpec, errors: ErrorLog) -> Iterator[tuple[Location, Row]]:
        info = sample_info(_path_of(spec))
        yield from read_jsonl(sample_path(info), errors)


def sample_info(name: str) -> SampleInfo:
    """The shipped sample called ``name`` (``chat``, ``gsm8k``, ...)."""
    for info in SAMPLES:
        if info.name == name:
            return info
    raise NotFound(
        f"no sample named {name!r}",
        hint=f"samples: {', '.join('sample:' + s.name for s in SAMPLES)}",
    )


def sample_path(info: SampleInfo) -> Path:
    """The file holding a shipped sample."""
    return Path(__file__).parent / "samples" / info.file


# -- resolution --------------------------------------------------------------------

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]+):(?P<rest>.*)$", re.DOTALL)
_REMOTE = frozenset({"http", "https", "s3", "gs", "gcs", "az", "abfs", "hf+https", "ftp", "sftp"})


def _import(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _instantiate(name: str) -> Any:
    for info in SOURCES:
        if info.name == name:
            return _import(info.factory)()
    raise NotFound(f"no dataset source {name!r}")  # pragma: no cover - names come from SOURCES


def _scheme_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for info in SOURCES:
        for scheme in info.schemes:
            table[scheme] = info.name
    return table


def _source_for_suffix(path: Path) -> str | None:
    lowered = path.name.lower()
    best: tuple[int, str] | None = None
    for info in SOURCES:
        for suffix in info.suffixes:
            if lowered.endswith(suffix) and (best is None or len(suffix) > best[0]):
                best = (len(suffix), info.name)
    return best[1] if best else None


def split_uri(uri: str) -> tuple[str | None, str]:
    """``"csv:data/x.csv"`` -> ``("csv", "data/x.csv")``; a plain path has no scheme.

    One-letter schemes are Windows drive letters, not schemes; ``file://`` is stripped.
    """
    m = _SCHEME.match(uri)
    if m is None:
        return None, uri
    scheme = m.group("scheme").lower()
    rest = m.group("rest")
    if scheme == "file":
        return None, rest[2:] if rest.startswith("//") else rest
    return scheme, rest


def _path_of(spec: DatasetSpec) -> str:
    scheme, rest = split_uri(spec.uri)
    if scheme is None or scheme in _scheme_table():
        return rest
    return spec.uri


@dataclass(frozen=True)
class Resolved:
    """A ``DatasetSpec.uri`` resolved: which source reads it and what it points at."""

    name: str
    target: str
    source: Any
    sample: SampleInfo | None = None

    @property
    def uri(self) -> str:
        """The canonical ``scheme:target`` form (recorded as the run's ``source``)."""
        return f"{self.name}:{self.target}"


def _plugin_sources() -> list[Any]:
    """Dataset sources other plugins registered (imports pluggy, so only asked when needed)."""
    try:
        from crucible_core import list_registrations

        regs = list_registrations("dataset")
    except Exception:  # a broken host must not hide our own, clearer, error
        return []
    ours = {info.name for info in SOURCES} | {f"sample:{s.name}" for s in SAMPLES}
    return [r for r in regs if r.name not in ours and r.metadata.get("kind") != "sample"]


def resolve(spec: DatasetSpec) -> Resolved:
    """Pick the source for ``spec``: ``format`` if set, else the URI scheme, else the suffix.

    Directories saved with ``save_to_disk`` go to ``hf-disk``, other directories to ``hf``;
    a name that is not on disk but looks like a Hub name goes to ``hf`` (which explains how
    to point at local files). Sources registered by other plugins are consulted for
    schemes and suffixes this plugin does not know.
    """
    scheme, rest = split_uri(spec.uri)
    schemes = _scheme_table()
    if spec.format is not None:
        wanted = spec.format.lower()
        name = schemes.get(wanted, wanted)
        if name not in {info.name for info in SOURCES}:
            for reg in _plugin_sources():
                if reg.name == wanted or wanted in reg.metadata.get("schemes", ()):
                    return Resolved(reg.name, rest, reg.create())
            raise ConfigError(
                f"dataset_spec.format: unknown format {spec.format!r}",
                hint=f"formats: {', '.join(sorted(schemes))}",
            )
        return _resolved(name, rest if scheme in schemes or scheme is None else spec.uri)
    if scheme is not None:
        if scheme in schemes:
            return _resolved(schemes[scheme], rest)
        for reg in _plugin_sources():
            if scheme in reg.metadata.get("schemes", ()):
                return Resolved(reg.name, rest, reg.create())
        if scheme in _REMOTE:
            raise ConfigError(
                f"{spec.uri}: remote URIs are not read; crucible never downloads datasets "
                "at run time",
                hint="download the file first and set uri to its local path",
            )
        raise ConfigError(
            f"{spec.uri}: unknown URI scheme {scheme!r}",
            hint=f"schemes: {', '.join(sorted(schemes))}, or a plain path ending in "
            + ", ".join(s for info in SOURCES for s in info.suffixes),
        )
    path = Path(rest).expanduser()
    by_suffix = _source_for_suffix(path)
    if by_suffix is not None:
        return _resolved(by_suffix, rest)
    if path.is_dir():
        return _resolved("hf-disk" if _is_saved_to_disk(path) else "hf", rest)
    for reg in _plugin_sources():
        if any(path.name.lower().endswith(s) for s in reg.metadata.get("suffixes", ())):
            return Resolved(reg.name, rest, reg.create())
    if not path.exists():
        if "/" in rest and _HUB_NAME.match(rest) and not rest.startswith((".", "/")):
            return _resolved("hf", rest)
        raise NotFound(
            f"{spec.uri}: no such file or directory",
            hint="check the path (relative paths are read from the current directory), "
            "or use sample:chat for a shipped sample",
        )
    raise ConfigError(
        f"{spec.uri}: cannot tell the format from the suffix {path.suffix or '(none)'!r}",
        hint="set format = 'jsonl' (or json, csv, parquet) in the dataset spec, or rename the file",
    )


def _resolved(name: str, target: str) -> Resolved:
    sample = sample_info(target) if name == "sample" else None
    return Resolved(name, target, _instantiate(name), sample)


def iter_located(spec: DatasetSpec, errors: ErrorLog) -> Iterator[tuple[Location, Row]]:
    """Every row of ``spec`` with its location, from whichever source :func:`resolve` picks."""
    resolved = resolve(spec)
    yield from iter_resolved(resolved, spec, errors)


def iter_resolved(
    resolved: Resolved, spec: DatasetSpec, errors: ErrorLog
) -> Iterator[tuple[Location, Row]]:
    source = resolved.source
    if hasattr(source, "iter_located"):
        yield from source.iter_located(spec, errors)
        return
    for index, row in enumerate(source.iter_rows(spec)):
        if not isinstance(row, Mapping):
            errors.reject(
                _row_error(
                    Location(spec.uri, index=index), f"expected a mapping, got {_json_kind(row)}"
                )
            )
            continue
        yield Location(spec.uri, index=index), dict(cast(Mapping[str, Any], row))

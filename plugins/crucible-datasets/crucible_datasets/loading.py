"""Reading a DatasetSpec into rows: resolve the source, check the field mapping, count skips.

:func:`stream_rows` is the streaming form (one pass, constant memory);
:func:`read_dataset` collects the rows with the facts a run manifest records
(source, skipped rows and why, the dataset's kind and columns);
:func:`load_rows` returns just the rows.

Every row is checked against the field mapping as it is read, so a row that
cannot be trained on is reported with its ``file:line`` here, not later.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from crucible_core.errors import ConfigError, ValidationError
from crucible_core.ir import DatasetSpec, FieldMap
from crucible_datasets._gc import gc_paused
from crucible_datasets.fields import RowAdapter, RowError, make_adapter
from crucible_datasets.hashing import dataset_hash
from crucible_datasets.sources import ErrorLog, Resolved, iter_resolved, resolve

__all__ = [
    "LoadedDataset",
    "adapter_for",
    "load_rows",
    "read_dataset",
    "stream_rows",
]

Row = dict[str, Any]


@dataclass
class LoadedDataset:
    """Rows read from a DatasetSpec, with what a run manifest records about them."""

    rows: list[Row]
    source: str
    kind: str
    columns: list[str]
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list[str])

    def hash(self) -> str:
        """The content hash of the rows (:func:`crucible_datasets.dataset_hash`)."""
        return dataset_hash(self.rows)


def preset_of(spec: DatasetSpec, resolved: Resolved | None = None) -> tuple[FieldMap, str | None]:
    """The field map and preset in force: the spec's, or a shipped sample's defaults."""
    preset = spec.options.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ValidationError(
            f"options.preset must be a name, got {preset!r}", path="$.options.preset"
        )
    sample = resolved.sample if resolved is not None else None
    if preset is None and sample is not None and spec.fields == FieldMap():
        preset = sample.preset
        if sample.fields:
            return FieldMap(**sample.fields), preset
    return spec.fields, preset


def adapter_for(
    spec: DatasetSpec,
    columns: Collection[str],
    *,
    where: str | None = None,
    resolved: Resolved | None = None,
) -> RowAdapter:
    """The row adapter for ``spec`` given the dataset's columns (see :func:`make_adapter`)."""
    if resolved is None:
        try:
            resolved = resolve(spec)
        except ConfigError:
            resolved = None
    fields, preset = preset_of(spec, resolved)
    return make_adapter(fields, columns, preset=preset, where=where or spec.uri)


def stream_rows(
    spec: DatasetSpec,
    errors: ErrorLog | None = None,
    *,
    info: dict[str, Any] | None = None,
) -> Iterator[Row]:
    """Rows of ``spec``, checked and streamed; ``limit`` applies; bad rows follow ``on_error``.

    ``errors`` collects skips (pass one to read the count afterwards). ``info``, if
    given, is filled with ``source``, ``kind`` and ``columns`` once the first row is read.
    An empty result raises :class:`~crucible_core.errors.ConfigError`.
    """
    errors = errors if errors is not None else ErrorLog(spec.on_error)
    resolved = resolve(spec)
    adapter: RowAdapter | None = None
    count = 0
    for loc, row in iter_resolved(resolved, spec, errors):
        if adapter is None:
            adapter = adapter_for(spec, list(row), where=str(loc), resolved=resolved)
            if info is not None:
                info.update(source=resolved.uri, kind=adapter.kind, columns=list(row))
        try:
            adapter(row)
        except RowError as exc:
            errors.reject(
                ValidationError(
                    f"{loc}: {exc}",
                    path=f"$.{exc.field}",
                    hint='fix the row, or set on_error = "skip" to skip bad rows and count them',
                    location=str(loc),
                )
            )
            continue
        yield row
        count += 1
        if spec.limit is not None and count >= spec.limit:
            return
    if count == 0:
        if errors.skipped:
            raise ConfigError(
                f"{spec.uri}: every row was bad ({errors.skipped} skipped); first: "
                f"{errors.messages[0] if errors.messages else '?'}",
                hint="fix the rows, or check fields and format",
            )
        raise ConfigError(
            f"{spec.uri}: the dataset is empty (no rows"
            + (f" in split {spec.split!r}" if spec.split else "")
            + ")",
            hint="point uri at a file with rows, or check split",
        )


def read_dataset(spec: DatasetSpec) -> LoadedDataset:
    """All rows of ``spec`` with their source, kind, columns and skip count."""
    errors = ErrorLog(spec.on_error)
    info: dict[str, Any] = {}
    with gc_paused():
        rows = list(stream_rows(spec, errors, info=info))
    return LoadedDataset(
        rows=rows,
        source=str(info["source"]),
        kind=str(info["kind"]),
        columns=list(info["columns"]),
        skipped=errors.skipped,
        skip_reasons=list(errors.messages),
    )


def load_rows(spec: DatasetSpec) -> list[Row]:
    """All rows of ``spec`` (checked; bad rows follow ``on_error``)."""
    return read_dataset(spec).rows

"""crucible-datasets: dataset sources, chat renderers, batching, splits and metrics.

The library API (no pluggy needed; heavy modules load on first use)::

    from crucible_datasets import load_rows, render_datums, iter_batches, dataset_hash

    rows = load_rows(spec)                            # list[dict], checked
    datums = render_datums(rows, tokenizer, spec)     # list[Datum]
    for batch in iter_batches(datums, 8, seed=0, epochs=2):
        ...

Importing this package is cheap: names resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    # reading
    "load_rows": "crucible_datasets.loading",
    "read_dataset": "crucible_datasets.loading",
    "stream_rows": "crucible_datasets.loading",
    "LoadedDataset": "crucible_datasets.loading",
    "resolve": "crucible_datasets.sources",
    "ErrorLog": "crucible_datasets.sources",
    "Location": "crucible_datasets.sources",
    "make_adapter": "crucible_datasets.fields",
    "Example": "crucible_datasets.fields",
    # rendering and tokenizing
    "get_renderer": "crucible_datasets.render",
    "Renderer": "crucible_datasets.render",
    "Rendered": "crucible_datasets.render",
    "render_datums": "crucible_datasets.datums",
    "iter_datums": "crucible_datasets.datums",
    "render_pairs": "crucible_datasets.datums",
    "count_tokens": "crucible_datasets.datums",
    "pack": "crucible_datasets.datums",
    "to_datum": "crucible_datasets.datums",
    "TokenStats": "crucible_datasets.datums",
    # batching
    "iter_batches": "crucible_datasets.batching",
    "iter_stream_batches": "crucible_datasets.batching",
    "stream_batches": "crucible_datasets.batching",
    "pad_batch": "crucible_datasets.batching",
    # splits and hashing
    "split_by_ratio": "crucible_datasets.splits",
    "stratified_split": "crucible_datasets.splits",
    "train_validation_split": "crucible_datasets.splits",
    "kfold": "crucible_datasets.splits",
    "sample_rows": "crucible_datasets.splits",
    "dataset_hash": "crucible_datasets.hashing",
    "DatasetHasher": "crucible_datasets.hashing",
    # stages without a pipeline
    "load_outputs": "crucible_datasets.stages",
    "tokenize_outputs": "crucible_datasets.stages",
}

__all__ = [
    "DatasetHasher",
    "ErrorLog",
    "Example",
    "LoadedDataset",
    "Location",
    "Rendered",
    "Renderer",
    "TokenStats",
    "__version__",
    "count_tokens",
    "dataset_hash",
    "get_renderer",
    "iter_batches",
    "iter_datums",
    "iter_stream_batches",
    "kfold",
    "load_outputs",
    "load_rows",
    "make_adapter",
    "pack",
    "pad_batch",
    "read_dataset",
    "render_datums",
    "render_pairs",
    "resolve",
    "sample_rows",
    "split_by_ratio",
    "stratified_split",
    "stream_batches",
    "stream_rows",
    "to_datum",
    "tokenize_outputs",
    "train_validation_split",
]

if TYPE_CHECKING:
    from crucible_datasets.batching import (
        iter_batches,
        iter_stream_batches,
        pad_batch,
        stream_batches,
    )
    from crucible_datasets.datums import (
        TokenStats,
        count_tokens,
        iter_datums,
        pack,
        render_datums,
        render_pairs,
        to_datum,
    )
    from crucible_datasets.fields import Example, make_adapter
    from crucible_datasets.hashing import DatasetHasher, dataset_hash
    from crucible_datasets.loading import LoadedDataset, load_rows, read_dataset, stream_rows
    from crucible_datasets.render import Rendered, Renderer, get_renderer
    from crucible_datasets.sources import ErrorLog, Location, resolve
    from crucible_datasets.splits import (
        kfold,
        sample_rows,
        split_by_ratio,
        stratified_split,
        train_validation_split,
    )
    from crucible_datasets.stages import load_outputs, tokenize_outputs


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crucible_datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)

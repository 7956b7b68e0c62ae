"""A stable content hash of a dataset, recorded in run manifests.

The hash covers the rows in order: each row is encoded as canonical JSON
(keys sorted at every level, no whitespace) followed by a newline, and the
stream is hashed with SHA-256 after a version prefix. It changes when any
value, key, row or the row order changes; it does not depend on the order
of keys inside a row, on the file format's whitespace, or on the machine.
Values JSON cannot hold (bytes, dates, decimals from Parquet) are encoded by
msgspec's rules (base64, ISO 8601) or, failing that, as their ``str``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

__all__ = ["HASH_VERSION", "DatasetHasher", "dataset_hash"]

HASH_VERSION = b"crucible-dataset-hash-v1\n"


def _fallback(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(value)


class DatasetHasher:
    """Incremental hashing, for streams too large to hold: ``update`` row by row."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256(HASH_VERSION)
        self._encode = msgspec.json.Encoder(order="sorted", enc_hook=_fallback).encode
        self.rows = 0

    def update(self, row: Mapping[str, Any]) -> None:
        """Add one row."""
        self._sha.update(self._encode(row))
        self._sha.update(b"\n")
        self.rows += 1

    def hexdigest(self) -> str:
        """``sha256:<64 hex digits>`` of the rows so far."""
        return "sha256:" + self._sha.hexdigest()


def dataset_hash(rows: Iterable[Mapping[str, Any]]) -> str:
    """The content hash of ``rows`` (any iterable; consumed once)."""
    hasher = DatasetHasher()
    for row in rows:
        hasher.update(row)
    return hasher.hexdigest()

"""The server's checkpoints by ``tinker://`` path, persisted so a restarted server keeps them.

The index maps each path the SDK was given to the crucible
:class:`~crucible_core.ir.backend.CheckpointRef` behind it, the base model
and the LoRA settings (what loading it into a new model needs). With a
``state_dir`` it lives in ``state_dir/checkpoints.json`` and is rewritten on
every registration the way crucible writes manifests
(:func:`crucible_core.records.artifacts.write_json`: a temporary file,
fsync, ``os.replace``, fsync of the directory), so a crash or a failed write
leaves the previous index whole and the new one, once acknowledged, survives
a power cut. The SDK is told of a checkpoint only after its entry is durable.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crucible_core.contracts import Sampler
from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir import convert, to_builtins
from crucible_core.ir.backend import CheckpointRef
from crucible_tinker.server import ids

__all__ = ["INDEX_FILE", "CheckpointIndex", "CheckpointRecord"]

INDEX_FILE = "checkpoints.json"


@dataclass
class CheckpointRecord:
    """One checkpoint: its ``tinker://`` uri, the crucible ref, and what made it."""

    uri: str
    ref: CheckpointRef
    base_model: str
    lora: dict[str, Any]
    #: The sampler opened on it (sampler weights only; not persisted).
    sampler: Sampler | None = None


class CheckpointIndex:
    """Checkpoints by uri; thread-safe. ``state_dir=None`` keeps them in memory only."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir
        self._lock = threading.Lock()  # the records
        self._write_lock = threading.Lock()  # one write of the file at a time
        self._records: dict[str, CheckpointRecord] = {}
        if state_dir is not None:
            self._records.update(load_index(state_dir / INDEX_FILE))

    @property
    def path(self) -> Path | None:
        """The index file, when the index is persisted."""
        return self.state_dir / INDEX_FILE if self.state_dir is not None else None

    def __contains__(self, uri: object) -> bool:
        with self._lock:
            return uri in self._records

    def uris(self) -> list[str]:
        """Every known path, sorted."""
        with self._lock:
            return sorted(self._records)

    def register(self, record: CheckpointRecord) -> None:
        """Add (or replace) ``record``, once the index holding it is durable.

        Writers take turns; readers never wait on the disk, and see ``record``
        only after it was written. When the write fails (disk full, file too
        large) the error propagates and both the file and memory keep the
        previous index: the SDK is never told of a checkpoint a restarted server
        would not know.
        """
        with self._write_lock:
            with self._lock:
                snapshot = {**self._records, record.uri: record}
            if self.path is not None:
                save_index(self.path, snapshot)
            with self._lock:
                self._records[record.uri] = record

    def get(self, uri: str) -> CheckpointRecord:
        """The record of ``uri``: ConfigError if it is not a tinker path, NotFound if this
        server has no such checkpoint."""
        try:
            ids.CheckpointPath.parse(uri)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        with self._lock:
            record = self._records.get(uri)
        if record is None:
            raise NotFound(f"no checkpoint {uri} on this server")
        return record


def save_index(path: Path, records: dict[str, CheckpointRecord]) -> None:
    """Write ``records`` to ``path`` atomically and durably (see the module docstring)."""
    from crucible_core.records.artifacts import write_json

    data = {
        uri: {"ref": to_builtins(r.ref), "base_model": r.base_model, "lora": r.lora}
        for uri, r in sorted(records.items())
    }
    write_json(path, data)


def load_index(path: Path) -> dict[str, CheckpointRecord]:
    """The records stored at ``path`` (none when the file does not exist)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, CheckpointRecord] = {}
    for uri, item in data.items():
        ref = convert(item["ref"], CheckpointRef)
        out[uri] = CheckpointRecord(uri, ref, item["base_model"], item["lora"])
    return out

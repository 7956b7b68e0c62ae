"""A run's ``manifest.json``: its schema and its one writer.

:class:`RunManifest` is the schema, :class:`RunRecord` the writer.

Everything that records something about a run (the pipeline's status and
stages, the training recipe's dataset, checkpoints and summary, the artifact
list) goes through a :class:`RunRecord`. A write merges the new top-level
fields into the current manifest, validates the result against
:class:`RunManifest` (a misspelt field or a wrong type is a programming error
caught at the write, not a surprise for a reader), and replaces the file
atomically (temporary file, fsync, ``os.replace``, fsync of the directory),
under a per-run lock so concurrent stages never lose each other's fields.

The schema is published as ``ir_schemas/RunManifest.schema.json``. Readers
that only display a manifest (``crucible runs``) may read it as plain JSON
with :func:`crucible_core.records.artifacts.read_manifest`; unknown fields of
an older or newer manifest are ignored when it is decoded as a
:class:`RunManifest`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import msgspec

from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.lineage import Artifact

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "ArtifactEntry",
    "DatasetRecord",
    "ExportRecord",
    "HubPush",
    "RunManifest",
    "RunRecord",
    "SampledEvalRecord",
    "SavedCheckpointRecord",
    "StageRecord",
    "TemplateRecord",
    "TokenizerRecord",
    "TrainingSummary",
]

MANIFEST_SCHEMA_VERSION = "1.1"

_Base = dict(kw_only=True, omit_defaults=True)


class DatasetRecord(msgspec.Struct, **_Base):
    """The data a run read. ``hash`` is the content hash of the rows (stable across
    file formats and row order of the source); ``file_sha256`` the sha256 of the
    local file it was read from, when there is one."""

    uri: str
    hash: str | None = None
    file_sha256: str | None = None
    rows: int | None = None
    skipped: int | None = None


class TemplateRecord(msgspec.Struct, **_Base):
    """The chat template the rows were rendered with, and its hash."""

    name: str | None = None
    hash: str | None = None


class TokenizerRecord(msgspec.Struct, **_Base):
    """The tokenizer of the trained model."""

    name: str
    vocab_size: int | None = None
    revision: str | None = None


class CapabilitiesRecord(msgspec.Struct, **_Base):
    """Which backend implementation answered."""

    backend_id: str
    provider: str | None = None


class StageRecord(msgspec.Struct, **_Base):
    """One stage (or recipe step) of the run: how it ended and how long it took."""

    status: str
    duration_ms: float | None = None


class ArtifactEntry(msgspec.Struct, **_Base):
    """A file or directory the run made, with what verifies it later."""

    artifact_id: str
    type: str
    uri: str
    created_at: str
    name: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    path: str | None = None
    files: dict[str, str] | None = None


class SavedCheckpointRecord(msgspec.Struct, **_Base):
    """A state checkpoint the loop keeps (see ``crucible_core.train.loop.SavedCheckpoint``)."""

    ref: CheckpointRef
    step: int
    metric: float | None = None


class TrainingSummary(msgspec.Struct, **_Base):
    """The ends of a training run: losses, steps, tokens, cost, time, evaluation."""

    initial_loss: float | None = None
    final_loss: float | None = None
    steps: int = 0
    total_steps: int = 0
    tokens: int = 0
    cost: float = 0.0
    elapsed_s: float = 0.0
    stopped: str | None = None
    evaluation: dict[str, Any] = {}


class SampledEvalRecord(msgspec.Struct, **_Base):
    """Sampled metrics of the weights after ``step`` (``crucible_core.train.sampled_eval``).

    ``when`` is ``before`` (step 0, the base weights), ``step`` (every
    ``validation_spec.every_n_steps``) or ``after`` (the last step);
    ``checkpoint`` is the URI of the state checkpoint holding those weights
    when the run kept one at that step, else None.
    """

    step: int
    when: str
    checkpoint: str | None = None
    scores: dict[str, float] = {}
    examples: int = 0


class ExportVerification(msgspec.Struct, **_Base):
    """How an export was checked: loaded by the stock library in a fresh process and
    compared with the run's own sampler (next-token logprobs on a fixed probe set)."""

    ok: bool
    max_abs_diff: float
    tolerance: float
    probes: int
    loader: str


class HubPush(msgspec.Struct, **_Base):
    """Where an export was uploaded (``checkpoint_policy.push_to_hub``): the repository,
    the hub endpoint and the commit."""

    repo: str
    endpoint: str
    commit: str
    url: str = ""


class ExportRecord(msgspec.Struct, **_Base):
    """One ``crucible export`` of this run: where it went, from which checkpoint, the
    sha256 of every file written, and its verification when ``--verify`` was given."""

    format: str
    path: str
    checkpoint: str
    created_at: str
    artifact_id: str
    files: dict[str, str] = {}
    base: str | None = None
    verification: ExportVerification | None = None
    #: Set when the run uploaded this export (``checkpoint_policy.push_to_hub``).
    hub: HubPush | None = None


RunStatus = Literal[
    "running", "succeeded", "failed", "cancelled", "interrupted", "budget_exhausted"
]


class RunManifest(msgspec.Struct, **_Base):
    """``runs/<id>/manifest.json``: what a run was and what it made."""

    schema_version: str = MANIFEST_SCHEMA_VERSION
    created_at: str | None = None
    updated_at: str | None = None
    job_id: str | None = None
    kind: str | None = None
    experiment_id: str | None = None
    #: Digest of the Experiment the pipeline ran (its stages and options).
    config_digest: str | None = None
    #: Digest of the TrainingJob alone: equal for the same job whatever ran it.
    job_config_digest: str | None = None
    seed: int | None = None
    status: RunStatus | None = None
    started_at: str | None = None
    finished_at: str | None = None
    #: How many times a pipeline started on this run directory (1, then retries, resumes).
    executions: int | None = None
    owner: dict[str, Any] | None = None
    environment: dict[str, Any] = {}
    versions: dict[str, str] = {}
    training_job: dict[str, Any] | None = None
    backend: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    capabilities: CapabilitiesRecord | None = None
    tokenizer: TokenizerRecord | None = None
    dataset: DatasetRecord | None = None
    template: TemplateRecord | None = None
    plan: dict[str, Any] | None = None
    resumed_from_step: int | None = None
    stages: dict[str, StageRecord] = {}
    artifacts: list[ArtifactEntry] = []
    checkpoints: list[SavedCheckpointRecord] = []
    last_checkpoint: CheckpointRef | None = None
    sampler_checkpoint: CheckpointRef | None = None
    training: TrainingSummary | None = None
    wall_time_s: float | None = None
    #: Every export of the run's weights (``crucible export``), oldest first.
    exports: list[ExportRecord] = []
    #: Task metrics from greedy samples during training, by step: the curve beside the loss.
    sampled_evals: list[SampledEvalRecord] = []


_FIELDS = frozenset(RunManifest.__struct_fields__)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


class RunRecord:
    """The only writer of one run directory's ``manifest.json``.

    Cheap to create (it holds a path); any number may exist for one run, in
    one process or several threads: writes are serialised per directory.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    @property
    def path(self) -> Path:
        """The manifest file."""
        from crucible_core.records.artifacts import MANIFEST_FILE

        return self.run_dir / MANIFEST_FILE

    def read(self) -> RunManifest:
        """The manifest as written; NotFound if the run has none yet."""
        from crucible_core.records.artifacts import read_manifest

        raw = read_manifest(self.run_dir)
        try:
            return msgspec.convert(raw, RunManifest)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{self.path}: not a run manifest ({exc})") from None

    def _read_or_new(self) -> RunManifest:
        try:
            return self.read()
        except NotFound:
            from crucible_core.records.artifacts import environment_info

            now = _now_iso()
            return RunManifest(created_at=now, updated_at=now, environment=environment_info())

    def update(self, **fields: Any) -> RunManifest:
        """Merge top-level ``fields`` into the manifest (created if missing), validated.

        Values may be Structs or plain data; they are converted to the
        schema's types. A name outside :class:`RunManifest` is a TypeError.
        """
        unknown = set(fields) - _FIELDS
        if unknown:
            raise TypeError(f"not manifest fields: {sorted(unknown)}")
        return self._change(lambda _: fields)

    def record_artifact(self, artifact: Artifact, *, path: Path | None = None) -> ArtifactEntry:
        """List ``artifact`` (replacing an entry of the same path), with what verifies it.

        ``path`` is the file or directory to verify later; by default the
        artifact's ``file://`` URI. Paths inside the run directory are stored
        relative to it, so a run directory can be moved whole.
        """
        from crucible_core.records.artifacts import tree_hashes, uri_path

        target = path if path is not None else uri_path(artifact.uri)
        entry = ArtifactEntry(
            artifact_id=artifact.artifact_id,
            type=artifact.type,
            name=cast(str | None, artifact.metadata.get("name")),
            uri=artifact.uri,
            size_bytes=artifact.size_bytes,
            sha256=artifact.sha256,
            created_at=(artifact.created_at or datetime.now(UTC)).isoformat(),
        )
        if target is not None:
            entry.path = _relative(self.run_dir, Path(target))
            if Path(target).is_dir():
                entry.files = tree_hashes(Path(target))
        key = entry.path or entry.artifact_id

        def change(current: RunManifest) -> Mapping[str, Any]:
            kept = [a for a in current.artifacts if (a.path or a.artifact_id) != key]
            return {"artifacts": [*kept, entry]}

        self._change(change)
        return entry

    def record_export(self, export: ExportRecord) -> None:
        """List ``export``, replacing an earlier export to the same path and format."""

        def change(current: RunManifest) -> Mapping[str, Any]:
            kept = [
                e for e in current.exports if (e.path, e.format) != (export.path, export.format)
            ]
            return {"exports": [*kept, export]}

        self._change(change)

    def record_sampled_eval(self, point: SampledEvalRecord) -> None:
        """Add ``point``, replacing an earlier one of the same step and ``when`` (a resume)."""

        def change(current: RunManifest) -> Mapping[str, Any]:
            kept = [
                e for e in current.sampled_evals if (e.step, e.when) != (point.step, point.when)
            ]
            return {"sampled_evals": sorted([*kept, point], key=lambda e: e.step)}

        self._change(change)

    def forget_artifacts(self, uri: str) -> None:
        """Unlist every artifact recorded with ``uri`` (its files are the owner's business)."""
        self._change(lambda m: {"artifacts": [a for a in m.artifacts if a.uri != uri]})

    def _change(self, make: Callable[[RunManifest], Mapping[str, Any]]) -> RunManifest:
        from crucible_core.records.artifacts import lock_for, write_json

        with lock_for(self.run_dir):
            current = self._read_or_new()
            changes = make(current)
            merged = msgspec.to_builtins(current)
            merged.update(msgspec.to_builtins(dict(changes)))
            merged["updated_at"] = _now_iso()
            merged["schema_version"] = MANIFEST_SCHEMA_VERSION
            try:
                manifest = msgspec.convert(merged, RunManifest)
            except msgspec.ValidationError as exc:
                raise TypeError(f"manifest write does not match the schema: {exc}") from exc
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.path, manifest)
            return manifest


def _relative(run: Path, target: Path) -> str:
    try:
        return target.resolve().relative_to(run.resolve()).as_posix()
    except ValueError:
        return str(target.resolve())

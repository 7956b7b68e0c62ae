"""Lineage IR: where every artifact came from.

A :class:`Trace` is one run's record: :class:`Span` per stage, the
:class:`Artifact` values it produced, and :class:`Edge` values linking
artifacts, runs and models (``consumes`` a dataset, ``produces`` a checkpoint,
``derived_from`` a base model or parent checkpoint). A registered model
version names how it was made from another model: ``fine_tuned_from``,
``dpo_from``, ``rl_from``, ``distilled_from``, ``merged_from``,
``exported_from`` (``src`` is the newer model, ``dst`` what it came from).
An evaluation (``eval:<id>``) was ``evaluated_on`` a dataset (``dst``, by
content hash) and is ``derived_from`` the run whose weights it scored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta

from crucible_core.ir.base import (
    SCHEMA_VERSION,
    IRStruct,
    NonNegativeInt,
    Params,
    SchemaVersion,
)

__all__ = ["Artifact", "ArtifactType", "Edge", "EdgeKind", "Span", "Trace"]

ArtifactType = Literal[
    "checkpoint", "model", "adapter", "dataset", "log", "report", "metrics", "config"
]
EdgeKind = Literal[
    "derived_from",
    "produces",
    "consumes",
    "depends_on",
    "triggers",
    # How one model came from another (model registry lineage): the child is ``src``.
    "fine_tuned_from",
    "dpo_from",
    "rl_from",
    "distilled_from",
    "merged_from",
    "exported_from",
    # An evaluation's scores were computed on a dataset (``dst``, by content hash).
    "evaluated_on",
]
Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]


class Span(IRStruct, frozen=True, kw_only=True):
    """A timed piece of a run (a stage, a step, a call)."""

    span_id: Annotated[str, Meta(min_length=1)]
    trace_id: str
    name: str
    parent_span_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    status: Literal["ok", "error", "cancelled", "running"] = "running"
    attributes: Params = {}


class Artifact(IRStruct, frozen=True, kw_only=True):
    """A file or remote object a run consumed or produced, identified by content."""

    schema_version: SchemaVersion = SCHEMA_VERSION
    artifact_id: Annotated[str, Meta(min_length=1)]
    type: ArtifactType
    uri: Annotated[str, Meta(min_length=1)]
    size_bytes: NonNegativeInt | None = None
    sha256: Sha256 | None = None
    created_at: datetime | None = None
    metadata: Params = {}


class Edge(IRStruct, frozen=True, kw_only=True):
    """A directed provenance link: ``src`` --kind--> ``dst``."""

    src: Annotated[str, Meta(min_length=1)]
    dst: Annotated[str, Meta(min_length=1)]
    kind: EdgeKind
    metadata: Params = {}


class Trace(IRStruct, frozen=True, kw_only=True):
    """One run's lineage record."""

    schema_version: SchemaVersion = SCHEMA_VERSION
    trace_id: Annotated[str, Meta(min_length=1)]
    parent_id: str | None = None
    spans: list[Span] = []
    artifacts: list[Artifact] = []
    edges: list[Edge] = []
    metadata: Params = {}

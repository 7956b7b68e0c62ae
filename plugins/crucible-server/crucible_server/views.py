"""The response bodies of the API, as msgspec Structs.

They are encoded with msgspec (no per-request model validation) and their
JSON Schemas go into ``/openapi.json`` next to the IR's, so the document
and the wire agree by construction.
"""

from __future__ import annotations

from typing import Any

import msgspec

from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.work import Job

__all__ = ["ArtifactEntry", "ArtifactList", "JobLinks", "JobPage", "JobView", "Submitted"]


class JobLinks(msgspec.Struct, frozen=True, kw_only=True):
    """Where to find a job's parts."""

    self: str
    events: str
    artifacts: str
    cancel: str
    retry: str


class JobView(msgspec.Struct, frozen=True, kw_only=True):
    """A job as it stands: its record, its progress from telemetry, its last checkpoint."""

    job: Job
    progress: dict[str, Any]
    checkpoint: CheckpointRef | None
    links: JobLinks


class JobPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of jobs, oldest first; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[Job]
    next_cursor: str | None


class Submitted(msgspec.Struct, frozen=True, kw_only=True):
    """A committed submission. ``created`` is False when the Idempotency-Key was seen before."""

    job_id: str
    status: str
    created: bool
    url: str
    stream_url: str


class ArtifactEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One file of a run directory."""

    path: str
    size: int
    url: str


class ArtifactList(msgspec.Struct, frozen=True, kw_only=True):
    """The files of a run directory, by relative path."""

    items: list[ArtifactEntry]


def links(job_id: str) -> JobLinks:
    """The links of ``job_id``."""
    base = f"/v1/jobs/{job_id}"
    return JobLinks(
        self=base,
        events=f"{base}/events",
        artifacts=f"{base}/artifacts",
        cancel=f"{base}/cancel",
        retry=f"{base}/retry",
    )

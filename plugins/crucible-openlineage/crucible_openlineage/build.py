"""A :class:`~crucible_openlineage.states.Transition` as an OpenLineage ``RunEvent``.

Built with openlineage-python's own model classes (``event_v2``/``facet_v2``),
imported here and nowhere on the light import path. What an event holds:

- ``run.runId``: a UUID derived from the crucible job id and the execution
  number (:func:`run_uuid`), so every event of a run, and a child's parent
  facet, name the same run without any shared state.
- ``job``: ``namespace`` (configured) and the run's name (the experiment's
  name, ``train <model>`` for a training run).
- ``inputs`` (START and terminal): the dataset with a ``version`` facet whose
  ``datasetVersion`` is its content hash (``sha256:<hex>``) when crucible
  could hash it.
- ``outputs`` (terminal): every artifact the run stored (checkpoints,
  exports, metrics) with its sha256 as ``version``, and the checkpoints it
  announced (``train.checkpoint``) that are not stored artifacts.
- run facets: ``parent`` for a run whose job has ``metadata.parent_job_id``
  (experiment cells), ``errorMessage`` on FAIL, and ``crucible``:
  job id and kind, experiment id, config digest, attempt, status.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, cast
from urllib.parse import urlparse

from crucible_openlineage.states import Transition

__all__ = ["PRODUCER", "build_event", "dataset_name", "run_uuid"]

PRODUCER: Final = "https://crucible.invalid/crucible-openlineage/0.1.0"
#: ``producer=`` of a facet: attrs names the init argument of ``_producer`` so, which
#: type checkers do not follow; passed as keywords.
_BY_US: Final[dict[str, Any]] = {"producer": PRODUCER}
#: The namespace of run UUIDs (a fixed UUID: the same job id gives the same runId).
_RUN_NS: Final = uuid.UUID("5f0c6a52-4a1d-4cf7-9d38-3c0b1f6a7e21")
_FACET_SCHEMA: Final = (
    "https://crucible.invalid/openlineage/CrucibleRunFacet.json#/$defs/CrucibleRunFacet"
)


def run_uuid(job_id: str, execution: int = 1) -> str:
    """The OpenLineage runId of execution ``execution`` of crucible job ``job_id``.

    The first execution's id depends on the job id alone, so a child names its
    parent (``parent_job_id``) without asking anyone; a retry or resume of the
    same run directory (execution 2, 3...) is a run of its own, as the spec's
    one START and one terminal per run requires.
    """
    key = job_id if execution <= 1 else f"{job_id}#{execution}"
    return str(uuid.uuid5(_RUN_NS, key))


def dataset_name(uri: str, default_namespace: str) -> tuple[str, str]:
    """(namespace, name) of a dataset URI after OpenLineage's naming convention.

    ``file:///a/b``, absolute paths and relative paths that exist ->
    ``("file", "/abs/path")``;
    ``s3://bucket/key`` -> ``("s3://bucket", "/key")``; a bare name such as a
    hub dataset id -> ``(default_namespace, name)``.
    """
    if "://" not in uri:
        from pathlib import Path

        if uri.startswith(("/", ".")) or Path(uri).exists():
            return "file", str(Path(uri).resolve())
        return default_namespace, uri
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return "file", parsed.path
    return f"{parsed.scheme}://{parsed.netloc}", parsed.path or "/"


def _digest(value: Any) -> str | None:
    """``sha256:<hex>`` whether crucible gave the bare hex (manifests) or the prefixed form."""
    if not value:
        return None
    text = str(value)
    return text if ":" in text else f"sha256:{text}"


def _execution(start: Mapping[str, Any]) -> int:
    value = start.get("execution")
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@functools.cache
def _facet_class() -> Any:
    """The ``crucible`` run facet class (built once, on first use: attrs + openlineage)."""
    import attr
    from openlineage.client.facet_v2 import RunFacet

    @attr.define
    class CrucibleRunFacet(RunFacet):
        """What crucible knows about the run beyond the standard facets."""

        job_id: str
        job_kind: str | None = attr.field(default=None)
        experiment_id: str | None = attr.field(default=None)
        config_digest: str | None = attr.field(default=None)
        attempt: int | None = attr.field(default=None)
        execution: int | None = attr.field(default=None)
        status: str | None = attr.field(default=None)
        dataset_hash: str | None = attr.field(default=None)

        @staticmethod
        def _get_schema() -> str:
            return _FACET_SCHEMA

    return CrucibleRunFacet


def build_event(t: Transition, *, namespace: str) -> Any:
    """The ``openlineage.client.event_v2.RunEvent`` for transition ``t``."""
    from openlineage.client.event_v2 import (
        InputDataset,
        Job,
        OutputDataset,
        Run,
        RunEvent,
        RunState,
    )
    from openlineage.client.facet_v2 import (
        dataset_version_dataset,
        error_message_run,
        job_type_job,
        parent_run,
    )

    CrucibleRunFacet = _facet_class()
    start = t.start
    dataset = cast(Mapping[str, Any] | None, start.get("dataset"))
    inputs: list[Any] = []
    if dataset and dataset.get("uri"):
        ns, name = dataset_name(str(dataset["uri"]), namespace)
        facets: dict[str, Any] = {}
        version = _digest(dataset.get("hash")) or _digest(t.dataset_hash)
        if version:
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion=version, **_BY_US
            )
        inputs.append(InputDataset(namespace=ns, name=name, facets=facets))

    outputs: list[Any] = []
    if t.state != "START":
        seen: set[str] = set()
        for raw in cast(list[Mapping[str, Any]], t.end.get("artifacts") or []):
            uri = str(raw.get("uri") or "")
            if not uri or uri in seen:
                continue
            seen.add(uri)
            ns, name = dataset_name(uri, namespace)
            facets = {}
            version = _digest(raw.get("sha256"))
            if version:
                facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                    datasetVersion=version, **_BY_US
                )
            outputs.append(OutputDataset(namespace=ns, name=name, facets=facets))
        for ck in t.checkpoints:
            uri = str(ck.get("uri") or "")
            if uri in seen:
                continue
            seen.add(uri)
            ns, name = dataset_name(uri, namespace)
            outputs.append(OutputDataset(namespace=ns, name=name))

    run_facets: dict[str, Any] = {
        "crucible": CrucibleRunFacet(
            job_id=t.job_id,
            job_kind=start.get("job_kind"),
            experiment_id=start.get("experiment_id"),
            config_digest=start.get("config_digest"),
            attempt=start.get("attempt"),
            execution=_execution(start),
            status=None if t.state == "START" else str(t.end.get("status") or t.state.lower()),
            dataset_hash=_digest((dataset or {}).get("hash") or t.dataset_hash),
            **_BY_US,
        )
    }
    parent = start.get("parent_job_id")
    if parent:
        run_facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=run_uuid(str(parent))),
            job=parent_run.Job(namespace=namespace, name=str(parent)),
            **_BY_US,
        )
    if t.state == "FAIL":
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=str(t.end.get("error") or t.end.get("status") or "failed"),
            programmingLanguage="python",
            **_BY_US,
        )
    job_facets: dict[str, Any] = {
        "jobType": job_type_job.JobTypeJobFacet(
            processingType="BATCH",
            integration="CRUCIBLE",
            jobType=str(start.get("job_kind") or "run").upper(),
            **_BY_US,
        )
    }
    return RunEvent(
        eventType=getattr(RunState, t.state),
        eventTime=_iso(t.ts),
        run=Run(runId=run_uuid(t.job_id, _execution(start)), facets=run_facets),
        job=Job(
            namespace=namespace,
            name=str(start.get("name") or t.job_id),
            facets=job_facets,
        ),
        inputs=inputs,
        outputs=outputs,
        **_BY_US,
    )


def to_json(event: Any) -> str:
    """The event as OpenLineage JSON (what the transports send)."""
    from openlineage.client.serde import Serde

    return Serde.to_json(event)

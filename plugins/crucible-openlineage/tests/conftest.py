"""Fixtures for crucible-openlineage: an isolated CRUCIBLE_HOME, a plugin host, local
HTTP lineage endpoints on 127.0.0.1 (one that records, one that hangs), and a reader
of what the file transport wrote.

Everything is real: real pipeline runs on the toy backend of the core tests
(``tests.toy_backend``, importable when pytest runs from the repository root),
real files, real HTTP over loopback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from crucible_openlineage import runtime

from crucible_core.plugins import PluginHost, reset_host
from crucible_core.testing.http import LocalEndpoint


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", str(tmp_path / "cache"))
    # Every test has its own home: drop warnings and lineage files land in it.
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "crucible-home"))
    for name in (
        "TRANSPORT",
        "FILE",
        "URL",
        "ENDPOINT",
        "API_KEY",
        "TIMEOUT_S",
        "NAMESPACE",
        "QUEUE",
        "FLUSH_S",
    ):
        monkeypatch.delenv(f"CRUCIBLE_OPENLINEAGE_{name}", raising=False)
    runtime.reset()
    yield
    runtime.reset()


@pytest.fixture
def crucible_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "crucible-home"
    monkeypatch.setenv("CRUCIBLE_HOME", str(home))
    return home


@pytest.fixture
def host() -> Iterator[PluginHost]:
    """A fresh host with the built-ins, the toy backend and this plugin, process-wide."""
    from crucible_openlineage import plugin

    from tests.toy_backend import toy_plugin

    h = PluginHost(autoload=False)
    h.add_plugin(toy_plugin(), name="toy")
    h.add_plugin(plugin, name="openlineage")
    reset_host(h)
    yield h
    reset_host(None)


def read_lineage(path: Path) -> list[dict[str, Any]]:
    """The OpenLineage events a file transport wrote, in order."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def endpoint() -> Iterator[LocalEndpoint]:
    """A lineage server on 127.0.0.1 that records every POSTed event and answers 201."""
    with LocalEndpoint(status=201, methods=("POST",)) as e:
        yield e


@pytest.fixture
def hanging_endpoint() -> Iterator[LocalEndpoint]:
    """A lineage server that holds every request 30 s (released when the test ends)."""
    with LocalEndpoint(hang_s=30.0, status=201, methods=("POST",)) as e:
        yield e


# -- validation ---------------------------------------------------------------------------
#
# No installable package ships the official spec (OpenLineage.json, facets/*.json):
# checked on 2026-12-04 in the wheels of openlineage-python 1.54 (and its 1.39 sdist),
# openlineage-integration-common 1.54, openlineage-airflow 1.41 and
# apache-airflow-providers-openlineage 2.20 (which ship only their own facets' schemas,
# referencing the core spec by URL), and no Debian or npm package has it; tests run
# offline, so it cannot be fetched. What always runs instead, on every event:
#
# 1. RUN_EVENT_SCHEMA below, a JSON Schema written from the spec: the required fields of
#    a RunEvent, its Run, Job and datasets; the event types; the formats of runId (uuid),
#    eventTime (date-time) and producer (uri); that every facet carries _producer and
#    _schemaURL; and the event's schemaURL is the spec's RunEvent.
# 2. Each standard facet against openlineage-python's generated class for it (generated
#    from the official facet schemas): its _schemaURL is the class's, it has every field
#    the class requires and no field the class does not have (STANDARD_FACETS).
# 3. The crucible custom facet against CRUCIBLE_FACET_SCHEMA.
# 4. openlineage-python's own RunEvent classes, whose validators check runId and the time.
#
# With CRUCIBLE_OPENLINEAGE_SPEC set to the official spec directory (the spec/ folder of
# the OpenLineage repository: OpenLineage.json and facets/*.json), every event is also
# validated against the official RunEvent definition and each standard facet against its
# official schema. See the README ("Tests") for the spec version last checked.

_FACET = {
    "type": "object",
    "required": ["_producer", "_schemaURL"],
    "properties": {
        "_producer": {"type": "string", "format": "uri"},
        "_schemaURL": {"type": "string", "format": "uri"},
    },
}
_FACETS = {"type": "object", "additionalProperties": {"$ref": "#/$defs/Facet"}}
_DATASET = {
    "type": "object",
    "required": ["namespace", "name"],
    "properties": {
        "namespace": {"type": "string", "minLength": 1},
        "name": {"type": "string", "minLength": 1},
        "facets": _FACETS,
        "inputFacets": _FACETS,
        "outputFacets": _FACETS,
    },
}

RUN_EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {"Facet": _FACET, "Dataset": _DATASET},
    "type": "object",
    "required": ["eventType", "eventTime", "run", "job", "producer", "schemaURL"],
    "properties": {
        "eventType": {"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
        "eventTime": {"type": "string", "format": "date-time"},
        "producer": {"type": "string", "format": "uri"},
        "schemaURL": {"type": "string", "format": "uri"},
        "run": {
            "type": "object",
            "required": ["runId"],
            "properties": {"runId": {"type": "string", "format": "uuid"}, "facets": _FACETS},
        },
        "job": {
            "type": "object",
            "required": ["namespace", "name"],
            "properties": {
                "namespace": {"type": "string", "minLength": 1},
                "name": {"type": "string", "minLength": 1},
                "facets": _FACETS,
            },
        },
        "inputs": {"type": "array", "items": {"$ref": "#/$defs/Dataset"}},
        "outputs": {"type": "array", "items": {"$ref": "#/$defs/Dataset"}},
    },
}


def _date_time(value: object) -> bool:
    # RFC 3339: a date, "T", a time and an offset (jsonschema checks it only with an extra).
    if not isinstance(value, str):
        return True
    parsed = datetime.fromisoformat(value)
    return "T" in value.upper() and parsed.tzinfo is not None


def _uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parsed = urlparse(value)
    return bool(parsed.scheme) and bool(parsed.netloc or parsed.path)


#: A directory holding the official OpenLineage spec (``OpenLineage.json`` and
#: ``facets/*.json``, e.g. the ``spec/`` folder of a checkout of the OpenLineage
#: repository). When set, events are validated against it as well.
SPEC_ENV = "CRUCIBLE_OPENLINEAGE_SPEC"

#: The ``crucible`` custom run facet, as the sink documents it (README, build.py).
CRUCIBLE_FACET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["_producer", "_schemaURL", "job_id"],
    "properties": {
        "_producer": {"type": "string", "format": "uri"},
        "_schemaURL": {"type": "string", "format": "uri"},
        "job_id": {"type": "string", "minLength": 1},
        "job_kind": {"type": ["string", "null"]},
        "experiment_id": {"type": ["string", "null"]},
        "config_digest": {"type": ["string", "null"]},
        "attempt": {"type": ["integer", "null"]},
        "execution": {"type": ["integer", "null"]},
        "status": {"type": ["string", "null"]},
        "dataset_hash": {"type": ["string", "null"]},
    },
    "additionalProperties": False,
}


def _checker() -> Any:
    import jsonschema

    checker = jsonschema.FormatChecker(["uuid"])
    checker.checks("date-time", raises=ValueError)(_date_time)
    checker.checks("uri", raises=ValueError)(_uri)
    return checker


def _official() -> tuple[dict[str, Any], Any, dict[str, str]] | None:
    """(core schema, referencing registry, facet name -> facet schema $id), or None."""
    import os

    raw = os.environ.get(SPEC_ENV)
    if not raw:
        return None
    from referencing import Registry, Resource

    spec = Path(raw)
    core = json.loads((spec / "OpenLineage.json").read_text())
    resources = [(core["$id"], Resource.from_contents(core))]
    facets: dict[str, str] = {}
    for path in sorted((spec / "facets").glob("*.json")):
        doc = json.loads(path.read_text())
        resources.append((doc["$id"], Resource.from_contents(doc)))
        for key in doc.get("properties", {}):
            facets[key] = doc["$id"]
    return core, Registry().with_resources(resources), facets


def _validate_facets(facets: dict[str, Any], official: Any) -> None:
    """Each standard facet against its official schema; the crucible facet against ours."""
    import jsonschema

    _, registry, known = official
    for key, facet in facets.items():
        if key == "crucible":
            jsonschema.Draft202012Validator(
                CRUCIBLE_FACET_SCHEMA, format_checker=_checker()
            ).validate(facet)
            continue
        assert key in known, f"facet {key!r} has no official schema"
        schema = {"$ref": known[key]}
        jsonschema.Draft202012Validator(
            schema, registry=registry, format_checker=_checker()
        ).validate({key: facet})


def _standard_facets() -> dict[str, Any]:
    """Facet key -> openlineage-python's generated class, for the facets the sink emits."""
    from openlineage.client.facet_v2 import (
        dataset_version_dataset,
        error_message_run,
        job_type_job,
        parent_run,
    )

    return {
        "parent": parent_run.ParentRunFacet,
        "version": dataset_version_dataset.DatasetVersionDatasetFacet,
        "errorMessage": error_message_run.ErrorMessageRunFacet,
        "jobType": job_type_job.JobTypeJobFacet,
    }


def check_standard_facet(key: str, facet: dict[str, Any]) -> None:
    """Raise if ``facet`` does not match the generated class of standard facet ``key``."""
    import attr

    classes = _standard_facets()
    assert key in classes, f"facet {key!r} is neither a known standard facet nor 'crucible'"
    cls = classes[key]
    assert facet["_schemaURL"] == cls._get_schema(), (key, facet["_schemaURL"])
    fields = {f.name: f for f in attr.fields(cls)}
    missing = [n for n, f in fields.items() if f.default is attr.NOTHING and n not in facet]
    assert not missing, f"facet {key!r} lacks required {missing}"
    unknown = sorted(set(facet) - set(fields))
    assert not unknown, f"facet {key!r} has fields its schema does not: {unknown}"


def validate_event(event: dict[str, Any]) -> None:
    """Raise if ``event`` (parsed JSON) is not a valid OpenLineage RunEvent.

    Always: the schema above, the crucible facet's, and openlineage-python's own
    model classes. With
    ``CRUCIBLE_OPENLINEAGE_SPEC`` set: also the official ``OpenLineage.json``
    (the RunEvent definition) and each standard facet's official schema.
    """
    import jsonschema
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState

    jsonschema.Draft202012Validator(RUN_EVENT_SCHEMA, format_checker=_checker()).validate(event)
    assert event["schemaURL"] == RunEvent._get_schema(), event["schemaURL"]  # pyright: ignore[reportPrivateUsage]
    facet_maps = [event["run"].get("facets") or {}, event["job"].get("facets") or {}]
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        facet_maps.append(dataset.get("facets") or {})
    for facets in facet_maps:
        for key, facet in facets.items():
            if key == "crucible":
                jsonschema.Draft202012Validator(
                    CRUCIBLE_FACET_SCHEMA, format_checker=_checker()
                ).validate(facet)
            else:
                check_standard_facet(key, facet)
    official = _official()
    if official is not None:
        core, registry, _ = official
        run_event = {"$ref": core["$id"] + "#/$defs/RunEvent"}
        jsonschema.Draft202012Validator(
            run_event, registry=registry, format_checker=_checker()
        ).validate(event)
        _validate_facets(event["run"].get("facets") or {}, official)
        _validate_facets(event["job"].get("facets") or {}, official)
        for dataset in event.get("inputs", []) + event.get("outputs", []):
            _validate_facets(dataset.get("facets") or {}, official)
    RunEvent(
        eventType=RunState(event["eventType"]),
        eventTime=event["eventTime"],
        run=Run(runId=event["run"]["runId"]),
        job=Job(namespace=event["job"]["namespace"], name=event["job"]["name"]),
        producer=event["producer"],
    )


@pytest.fixture
def validate() -> Any:
    """``validate(event)``: raise if the parsed JSON is not a valid OpenLineage RunEvent."""
    return validate_event


@pytest.fixture
def lineage_of() -> Any:
    """``lineage_of(path)``: the OpenLineage events a file transport wrote, in order."""
    return read_lineage

"""Fixtures for crucible-openlineage: an isolated CRUCIBLE_HOME, a plugin host, local
HTTP lineage endpoints on 127.0.0.1 (one that records, one that hangs), and a reader
of what the file transport wrote.

Everything is real: real pipeline runs on the toy backend of the core tests
(``tests.toy_backend``, importable when pytest runs from the repository root),
real files, real HTTP over loopback.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from crucible_openlineage import runtime

from crucible_core.plugins import PluginHost, reset_host


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


class Endpoint:
    """A lineage server on 127.0.0.1: records POSTed JSON, or hangs for ``hang_s``."""

    def __init__(self, hang_s: float = 0.0) -> None:
        self.events: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if hang_s:
                    outer.release.wait(hang_s)  # a server that never answers in time
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                outer.paths.append(self.path)
                outer.events.append(json.loads(body))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.close()


@pytest.fixture
def hanging_endpoint() -> Iterator[Endpoint]:
    e = Endpoint(hang_s=30.0)
    yield e
    e.close()


# -- validation ---------------------------------------------------------------------------
#
# Always: a JSON Schema of the OpenLineage RunEvent written for these tests from the spec
# (openlineage-python does not ship the spec's OpenLineage.json, and tests run offline):
# the required fields of a RunEvent, its Run, Job and datasets; the event types; the
# formats of runId (uuid), eventTime (date-time) and producer (uri); that every facet
# carries _producer and _schemaURL; and openlineage-python's own model classes, whose
# validators check the runId and the event time again.
#
# With CRUCIBLE_OPENLINEAGE_SPEC set to the official spec directory (the spec/ folder of
# the OpenLineage repository: OpenLineage.json and facets/*.json), every event is also
# validated against the official RunEvent definition and each standard facet against its
# official schema (the crucible custom facet against CRUCIBLE_FACET_SCHEMA below). See
# the README ("Tests") for the spec version last checked.

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
    crucible = (event["run"].get("facets") or {}).get("crucible")
    if crucible is not None:
        jsonschema.Draft202012Validator(CRUCIBLE_FACET_SCHEMA, format_checker=_checker()).validate(
            crucible
        )
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

"""The RunEvents built from transitions: valid OpenLineage, with the facts a catalogue needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from crucible_openlineage.build import build_event, dataset_name, run_uuid, to_json
from crucible_openlineage.states import RunTracker

_START = {
    "name": "train toy",
    "job_kind": "training_run",
    "experiment_id": "cell-3",
    "config_digest": "c" * 64,
    "dataset": {"uri": "/data/rows.jsonl", "hash": "d" * 64},
    "attempt": 1,
    "parent_job_id": "sweep-1",
}
_END = {
    "status": "failed",
    "error": "BackendError: boom",
    "artifacts": [
        {"uri": "file:///store/sha256/aa/ck", "sha256": "a" * 64, "type": "adapter"},
        {"uri": "file:///store/sha256/aa/ck", "sha256": "a" * 64, "type": "adapter"},
    ],
}


def _events(end: dict[str, Any]) -> list[dict[str, Any]]:
    t = RunTracker()
    out = t.feed("run.start", "cell-3", 10.0, _START)
    out += t.feed("train.checkpoint", "cell-3", 11.0, {"uri": "mem://sampler/final"}, step=3)
    out += t.feed("run.end", "cell-3", 12.0, end)
    return [json.loads(to_json(build_event(x, namespace="team"))) for x in out]


def test_start_and_fail_events_are_valid_and_carry_the_run_facts(validate: Any) -> None:
    start, fail = _events(_END)
    for e in (start, fail):
        validate(e)
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    assert start["run"]["runId"] == fail["run"]["runId"] == run_uuid("cell-3")
    assert start["job"] == fail["job"] | {"facets": start["job"]["facets"]}
    assert start["job"]["namespace"] == "team"
    assert start["job"]["name"] == "train toy"
    [dataset] = start["inputs"]
    assert (dataset["namespace"], dataset["name"]) == ("file", "/data/rows.jsonl")
    assert dataset["facets"]["version"]["datasetVersion"] == "sha256:" + "d" * 64
    crucible = fail["run"]["facets"]["crucible"]
    assert crucible["config_digest"] == "c" * 64
    assert crucible["job_id"] == "cell-3"
    assert crucible["status"] == "failed"
    parent = fail["run"]["facets"]["parent"]
    assert parent["run"]["runId"] == run_uuid("sweep-1")
    assert parent["job"] == {"namespace": "team", "name": "sweep-1", "facets": {}}
    assert fail["run"]["facets"]["errorMessage"]["message"] == "BackendError: boom"
    assert start["outputs"] == []
    outs = {(o["namespace"], o["name"]): o for o in fail["outputs"]}
    assert set(outs) == {("file", "/store/sha256/aa/ck"), ("mem://sampler", "/final")}
    stored = outs[("file", "/store/sha256/aa/ck")]
    assert stored["facets"]["version"]["datasetVersion"] == "sha256:" + "a" * 64


def test_complete_has_no_error_and_a_run_without_parent_has_no_parent_facet(
    validate: Any,
) -> None:
    t = RunTracker()
    start = {k: v for k, v in _START.items() if k != "parent_job_id"}
    out = t.feed("run.start", "r", 1.0, start) + t.feed(
        "run.end", "r", 2.0, {"status": "succeeded"}
    )
    complete = json.loads(to_json(build_event(out[1], namespace="crucible")))
    validate(complete)
    assert complete["eventType"] == "COMPLETE"
    assert set(complete["run"]["facets"]) == {"crucible"}


def test_a_dataset_hash_already_prefixed_is_not_prefixed_again() -> None:
    t = RunTracker()
    start = {"name": "x", "dataset": {"uri": "hub/ds", "hash": "sha256:" + "e" * 64}}
    [ev] = t.feed("run.start", "r", 1.0, start)
    event = json.loads(to_json(build_event(ev, namespace="ns")))
    [dataset] = event["inputs"]
    assert (dataset["namespace"], dataset["name"]) == ("ns", "hub/ds")
    assert dataset["facets"]["version"]["datasetVersion"] == "sha256:" + "e" * 64


def test_each_execution_of_a_run_directory_is_its_own_run() -> None:
    t = RunTracker()
    ids = []
    for execution in (1, 2, 3):
        out = t.feed("run.start", "r", 1.0, {"name": "x", "execution": execution})
        out += t.feed("run.end", "r", 2.0, {"status": "interrupted"})
        events = [json.loads(to_json(build_event(x, namespace="ns"))) for x in out]
        assert len({e["run"]["runId"] for e in events}) == 1
        ids.append(events[0]["run"]["runId"])
        assert events[1]["run"]["facets"]["crucible"]["execution"] == execution
    assert ids[0] == run_uuid("r")  # the first: what a child's parent facet names
    assert len(set(ids)) == 3


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:///a/b.jsonl", ("file", "/a/b.jsonl")),
        ("/a/b.jsonl", ("file", "/a/b.jsonl")),
        ("s3://bucket/key/x", ("s3://bucket", "/key/x")),
        ("org/dataset", ("dflt", "org/dataset")),
    ],
)
def test_dataset_names_follow_the_openlineage_naming(uri: str, expected: tuple[str, str]) -> None:
    assert dataset_name(uri, "dflt") == expected


def test_a_relative_path_that_exists_is_a_file_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    assert dataset_name("data/rows.jsonl", "dflt") == (
        "file",
        str((tmp_path / "data" / "rows.jsonl").resolve()),
    )
    assert dataset_name("data/absent.jsonl", "dflt") == ("dflt", "data/absent.jsonl")


def test_the_validator_rejects_what_the_spec_forbids(validate: Any) -> None:
    [good, _] = _events({"status": "succeeded"})
    validate(good)
    for path, value in [
        (("run", "runId"), "not-a-uuid"),
        (("eventTime",), "yesterday"),
        (("eventType",), "DONE"),
        (("producer",), "no scheme"),
    ]:
        bad = json.loads(json.dumps(good))
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises((jsonschema.ValidationError, ValueError)):
            validate(bad)
    no_job = {k: v for k, v in good.items() if k != "job"}
    with pytest.raises(jsonschema.ValidationError):
        validate(no_job)
    facetless = json.loads(json.dumps(good))
    del facetless["run"]["facets"]["crucible"]["_producer"]
    with pytest.raises(jsonschema.ValidationError):
        validate(facetless)


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("schemaURL", lambda f: f.update(_schemaURL=f["_schemaURL"].replace("1-2-0", "9-9-9"))),
        ("missing", lambda f: f.pop("run")),
        ("unknown", lambda f: f.update(runIdentifier="x")),
    ],
)
def test_the_always_on_validation_catches_a_facet_off_its_standard(
    validate: Any, where: str, change: Any
) -> None:
    """Without the official spec files (no package ships them), a standard facet is checked
    against openlineage-python's class generated from them: a wrong schema URL, a missing
    required field or a field the standard does not define fails."""
    _, fail = _events(_END)
    validate(fail)
    change(fail["run"]["facets"]["parent"])
    with pytest.raises(AssertionError):
        validate(fail)


def test_the_event_schema_url_is_the_spec_run_event(validate: Any) -> None:
    start, _ = _events(_END)
    start["schemaURL"] = "https://openlineage.io/spec/1-0-0/OpenLineage.json#/$defs/RunEvent"
    with pytest.raises(AssertionError):
        validate(start)

"""/openapi.json: OpenAPI 3.1, the IR's msgspec schemas as components, committed fresh."""

from __future__ import annotations

import json
from pathlib import Path

from crucible_server.openapi import render

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "docs" / "openapi.json"


def test_committed_document_is_fresh() -> None:
    assert COMMITTED.read_text() == render(), (
        "docs/openapi.json is stale: python -m crucible_server.openapi > docs/openapi.json"
    )


def test_served_document_is_the_committed_one(start_server, http) -> None:
    srv = start_server(tokens=None, workers=0)
    served = http(srv).get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == json.loads(COMMITTED.read_text())


def test_components_are_the_ir_schemas() -> None:
    doc = json.loads(COMMITTED.read_text())
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    for name in ("Job", "TrainingJob", "Experiment", "JobError", "RetryPolicy"):
        ir = json.loads((ROOT / "ir_schemas" / f"{name}.schema.json").read_text())
        ir_def = ir["$defs"][name] if "$defs" in ir and name in ir["$defs"] else ir
        assert set(schemas[name]["properties"]) == set(ir_def["properties"]), name
        assert schemas[name].get("required", []) == ir_def.get("required", []), name


def test_every_operation_documents_problem_errors_and_security() -> None:
    doc = json.loads(COMMITTED.read_text())
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path in ("/healthz", "/metrics"):
                assert op["security"] == []
                continue
            problem = op["responses"].get("4XX", {}).get("content", {})
            assert problem.get("application/problem+json"), (method, path)
            if path.startswith("/v1/"):
                assert "security" not in op  # the document-wide bearer requirement applies
    assert doc["security"] == [{"bearer": []}]

"""``/v1/models/...`` on a real crucible-server on 127.0.0.1, mounted through core's
``register_api_routes`` hook by this plugin's entry point (the server hard-codes none of it)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from crucible_registry import Registry
from crucible_server.runner import ApiServer
from crucible_server.tokens import TokenStore

from crucible_core.plugins import PluginHost
from crucible_core.queue.scheduler import Scheduler


@pytest.fixture
def server(three: Registry) -> Iterator[tuple[ApiServer, dict[str, httpx.Client]]]:
    """A server whose plugins come from the installed entry points, with three versions of
    'bigram' and tokens: ``admin``, ``reader`` (jobs:read), ``none`` (no token)."""
    store = TokenStore()
    admin, _ = store.create("acme", ["admin"])
    reader, _ = store.create("acme", ["jobs:read"])
    srv = ApiServer(Scheduler(), tokens=store, host_plugins=PluginHost(), workers=0).start(30)
    clients = {
        who: httpx.Client(base_url=srv.url, timeout=30,
                          headers={"Authorization": f"Bearer {tok}"} if tok else {})
        for who, tok in (("admin", admin), ("reader", reader), ("none", None))
    }  # fmt: skip
    try:
        yield srv, clients
    finally:
        for c in clients.values():
            c.close()
        srv.stop()
        srv.scheduler.close()
        store.close()


def test_read_versions_aliases_and_history(server, three: Registry) -> None:  # type: ignore[no-untyped-def]
    _, c = server
    reader = c["reader"]
    assert [m["name"] for m in reader.get("/v1/models").json()] == ["bigram"]
    assert reader.get("/v1/models/bigram").json()["versions"] == [1, 2, 3]
    v2 = reader.get("/v1/models/bigram/versions/2").json()
    assert (v2["version"], v2["run_id"], v2["step"]) == (2, "run-a", 12)
    assert [v["version"] for v in reader.get("/v1/models/bigram/versions").json()] == [1, 2, 3]
    missing = reader.get("/v1/models/bigrm")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert "bigram" in missing.json()["hint"]  # the closest name
    assert reader.get("/v1/models/bigram/versions/9").status_code == 404
    assert c["none"].get("/v1/models").status_code == 401
    three.set_alias("bigram", "production", 1)
    held = reader.get("/v1/models/bigram/aliases/production").json()
    assert held["version"] == 1
    [event] = reader.get("/v1/models/bigram/history").json()
    assert (event["alias"], event["version"], event["previous"]) == ("production", 1, None)


def test_moves_are_admin_only_gated_and_recorded(server, three: Registry) -> None:  # type: ignore[no-untyped-def]
    _, c = server
    url = "/v1/models/bigram/aliases/production"
    assert c["reader"].post(url, json={"version": 1}).status_code == 403
    first = c["admin"].post(url, json={"version": 1, "reason": "first"})
    assert first.status_code == 200, first.text
    assert first.json()["actor"].startswith("api:acme/")
    three.record_eval("bigram", 2, {"em": 0.1}, suite="s", eval_id="eval-low")
    three.add_gate("bigram", "production", "eval.s.em >= 0.5")
    check = c["reader"].get(f"{url}/check", params={"version": 2}).json()
    assert [(r["rule"], r["passed"]) for r in check] == [("eval.s.em >= 0.5", False)]
    refused = c["admin"].post(url, json={"version": 2})
    assert refused.status_code == 409
    problem = refused.json()
    assert problem["code"] == "conflict"
    [gate] = problem["gates"]
    assert gate["observed"][0]["eval_id"] == "eval-low"
    assert three.resolve("bigram@production").version == 1  # nothing moved
    stale = c["admin"].post(url, json={"version": 2, "expected": 3, "force": True, "reason": "x"})
    assert stale.status_code == 409  # someone else's view of the holder
    forced = c["admin"].post(url, json={"version": 2, "force": True, "reason": "hotfix"})
    assert forced.status_code == 200, forced.text
    assert forced.json()["forced"] is True
    assert forced.json()["evidence"][0]["passed"] is False
    bad = c["admin"].post(url, json={"version": "two"})
    assert bad.status_code == 422
    back = c["admin"].post(f"{url}/rollback", json={"reason": "undo"})
    assert back.status_code == 200, back.text
    assert three.resolve("bigram@production").version == 1
    assert [e["action"] for e in c["reader"].get("/v1/models/bigram/history").json()] == [
        "set", "set", "rollback"]  # fmt: skip


def test_the_registry_endpoints_are_in_the_openapi_document(server) -> None:  # type: ignore[no-untyped-def]
    _, c = server
    doc = c["reader"].get("/openapi.json").json()
    assert "/v1/models/{name}/aliases/{alias}" in doc["paths"]
    move = doc["paths"]["/v1/models/{name}/aliases/{alias}"]["post"]
    body = move["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/AliasMove"}
    for name in ("Version", "AliasEvent", "Model", "AliasMove", "RuleResult"):
        assert name in doc["components"]["schemas"], name

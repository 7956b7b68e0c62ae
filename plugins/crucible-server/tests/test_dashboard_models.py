"""The models page's data and rollback (``/ui/api/models``) over real HTTP, on a real
registry: toy-backend runs registered as versions, an alias moved through a gate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from crucible_registry import Registry
from crucible_server.tokens import TokenStore

from crucible_core.ir import (
    AdamW,
    CheckpointPolicy,
    DatasetSpec,
    Full,
    LearningConfig,
    ModelSpec,
    TrainingJob,
)
from crucible_core.plugins import PluginHost, reset_host
from crucible_core.train.run import run_training


@pytest.fixture
def toy(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginHost]:
    from tests.toy_backend import toy_plugin

    monkeypatch.setenv("CRUCIBLE_USER", "tester")
    h = PluginHost(autoload=False)
    h.add_plugin(toy_plugin(), name="toy")
    reset_host(h)
    yield h
    reset_host(None)


def train_toy(host: PluginHost, run_id: str) -> None:
    """A real 8-step run of the toy backend (file checkpoints at steps 4 and 8)."""
    job = TrainingJob(
        backend="toyfile",
        model_spec=ModelSpec(name="toy", revision="r1"),
        adapter_config=Full(),
        dataset_spec=DatasetSpec(uri="mem"),
        learning_config=LearningConfig(optimizer=AdamW(lr=0.02), batch_size=4, max_steps=8),
        checkpoint_policy=CheckpointPolicy(save_every=4, keep_last=2, save_best=False),
    )
    run_training(msgspec.structs.replace(job), job_id=run_id, host=host)


def test_models_show_versions_alias_history_with_evidence_and_roll_back(
    toy: PluginHost, start_server, http, tokens: TokenStore
) -> None:
    train_toy(toy, "run-a")
    with Registry() as reg:
        reg.register("run-a", name="bigram", checkpoint="4")
        reg.register("run-a", name="bigram", checkpoint="8")
        reg.add_gate("bigram", "prod", "loss <= 100.0")
        reg.set_alias("bigram", "prod", 1, reason="first")
        reg.set_alias("bigram", "prod", 2, reason="better")
    admin, _ = tokens.create("acme", ["admin"])
    ro, _ = tokens.create("acme", ["jobs:read"])
    srv = start_server(tokens=tokens, workers=0)
    data = http(srv, ro).get("/ui/api/models").json()
    (model,) = data["models"]
    assert model["name"] == "bigram"
    assert [v["version"] for v in model["versions"]] == [1, 2]
    assert all(v["run_id"] == "run-a" for v in model["versions"])
    (alias,) = model["aliases"]
    assert (alias["alias"], alias["version"]) == ("prod", 2)
    newest = alias["history"][0]  # newest first
    assert (newest["version"], newest["previous"], newest["reason"]) == (2, 1, "better")
    assert newest["evidence"][0]["rule"] == "loss <= 100.0"
    assert newest["evidence"][0]["passed"] is True
    assert [g["rule"] for g in model["gates"]] == ["loss <= 100.0"]
    # Rolling back needs admin; then the alias holds v1 again and the move is in the history.
    url = "/ui/api/models/bigram/aliases/prod/rollback"
    assert http(srv, ro).post(url).status_code == 403
    event = http(srv, admin).post(url).json()
    assert (event["action"], event["version"]) == ("rollback", 1)
    after = http(srv, ro).get("/ui/api/models").json()["models"][0]["aliases"][0]
    assert after["version"] == 1
    assert after["history"][0]["actor"].startswith("dashboard:")
    assert http(srv, admin).post("/ui/api/models/nope/aliases/prod/rollback").status_code == 404
    # Lineage of a version, from the registry: v2 came from run-a (and its checkpoint).
    lin = http(srv, ro).get("/ui/api/models/bigram/versions/2/lineage").json()
    assert lin["ancestors"]["id"] == "models:/bigram/2"

    def ids(node: dict[str, object]) -> set[str]:
        kids = node["children"]
        assert isinstance(kids, list)
        return {str(node["id"])} | {i for k in kids for i in ids(k)}

    assert "run-a" in ids(lin["ancestors"])
    assert http(srv, ro).get("/ui/api/models/bigram/versions/9/lineage").status_code == 404
    page = http(srv).get("/models/bigram/2/lineage")
    assert page.status_code == 200
    assert 'data-source="model"' in page.text

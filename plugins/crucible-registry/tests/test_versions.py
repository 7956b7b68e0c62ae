"""Registering versions from real toy runs: records, idempotence, pins, refusals."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from crucible_registry import Registry

from crucible_core.errors import BudgetExhausted, ConfigError, IntegrityError, NotFound
from crucible_core.ir import Budget, CheckpointPolicy, TrainingJob
from crucible_core.plugins import PluginHost
from crucible_core.records import pins
from crucible_core.records.artifacts import LocalArtifactStore, read_manifest, verify_run
from crucible_core.train.run import run_training
from crucible_core.train.state import read_loop_state


def test_a_version_records_the_run_and_its_checksummed_artifact(
    train: Callable[..., Path], registry: Registry, home: Path
) -> None:
    run = train("run-a")
    v = registry.register("run-a", name="bigram", checkpoint="12", tags={"team": "nlp"})
    manifest = read_manifest(run)
    entry = next(
        a for a in manifest["artifacts"] if a.get("path") == "checkpoints/step-000012/state"
    )
    assert (v.name, v.version, v.existing) == ("bigram", 1, False)
    assert (v.run_id, v.checkpoint, v.step) == ("run-a", "step-12", 12)
    assert v.config_hash == manifest["job_config_digest"]
    assert v.dataset_hash == manifest["dataset"]["hash"]
    assert (v.base_model, v.base_revision, v.backend) == ("toy", "r1", "toyfile")
    assert v.manifest_hash == hashlib.sha256((run / "manifest.json").read_bytes()).hexdigest()
    assert v.metrics["step"] == 12
    assert v.tags == {"team": "nlp"}
    assert v.created_by == "tester"
    [art] = v.artifacts
    assert art.sha256 == entry["sha256"]
    assert LocalArtifactStore().exists(art.sha256)  # a copy in the core store
    assert pins.is_pinned(art.sha256)


def test_registering_again_returns_the_same_version_and_counts_up_otherwise(
    train: Callable[..., Path], registry: Registry
) -> None:
    train("run-a")
    first = registry.register("run-a", name="bigram", checkpoint="12")
    again = registry.register("run-a", name="bigram", checkpoint="step-12", tags={"k": "v"})
    assert (again.version, again.existing) == (first.version, True)
    assert again.tags == {"k": "v"}
    other = registry.register("run-a", name="bigram", checkpoint="8")
    assert (other.version, other.existing) == (2, False)
    elsewhere = registry.register("run-a", name="other-name", checkpoint="12")
    assert elsewhere.version == 1  # versions count per name
    assert [m.name for m in registry.models()] == ["bigram", "other-name"]
    assert registry.model("bigram").versions == [1, 2]


def test_unknown_names_and_versions_name_the_closest(
    train: Callable[..., Path], registry: Registry
) -> None:
    train("run-a")
    registry.register("run-a", name="bigram", checkpoint="12")
    with pytest.raises(NotFound, match="no registered model 'bigrm'") as info:
        registry.resolve("bigrm")
    assert info.value.details["closest"] == ["bigram"]
    assert "did you mean bigram" in (info.value.hint or "")
    with pytest.raises(NotFound, match="has no version 7") as info:
        registry.version("bigram", 7)
    assert "its versions: 1" in (info.value.hint or "")
    with pytest.raises(NotFound, match="no alias 'prod'"):
        registry.resolve("bigram@prod")


@pytest.mark.parametrize("damage", ["alter", "delete"])
def test_a_damaged_checkpoint_is_refused_and_nothing_is_written(
    train: Callable[..., Path], registry: Registry, home: Path, damage: str
) -> None:
    run = train("run-a")
    target = run / "checkpoints" / "step-000012" / "state" / "w.npy"
    if damage == "alter":
        target.write_bytes(target.read_bytes()[:-1] + b"\x01")
    else:
        target.unlink()
    error = IntegrityError if damage == "alter" else NotFound
    with pytest.raises(error, match=r"does not match|is missing"):
        registry.register("run-a", name="bigram", checkpoint="12")
    assert registry.models() == []
    assert not (home / "pins").exists() or not any((home / "pins").iterdir())
    entry = next(
        a
        for a in read_manifest(run)["artifacts"]
        if a.get("path") == "checkpoints/step-000012/state"
    )
    assert not LocalArtifactStore().exists(entry["sha256"])


def test_remote_or_unfinished_checkpoints_are_refused(
    train: Callable[..., Path], registry: Registry
) -> None:
    train("run-a")  # the toy backend keeps its sampler weights in memory (mem://)
    with pytest.raises(ConfigError, match="remote"):
        registry.register("run-a", name="bigram")
    with pytest.raises(NotFound, match="keeps no checkpoint of step 3") as info:
        registry.register("run-a", name="bigram", checkpoint="3")
    assert "kept steps: 8, 12" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="not a valid model name"):
        registry.register("run-a", name="../x", checkpoint="12")
    assert registry.models() == []


def test_versions_and_metadata_survive_reopening(train: Callable[..., Path], home: Path) -> None:
    train("run-a")
    with Registry() as reg:
        reg.register("run-a", name="bigram", checkpoint="12")
    with Registry() as reg:
        v = reg.resolve("models:/bigram/1")
    assert json.loads(json.dumps(v.metrics)) == v.metrics
    assert (home / "registry.db").is_file()


def test_retention_of_a_resumed_run_keeps_the_registered_checkpoint(
    toy: PluginHost, registry: Registry, home: Path, make_job: Callable[..., TrainingJob]
) -> None:
    policy = CheckpointPolicy(save_every=4, keep_last=1, save_best=False)
    with pytest.raises(BudgetExhausted):
        run_training(make_job(checkpoint_policy=policy, budget=Budget(max_tokens=1500)),
                     job_id="cut", host=toy)  # fmt: skip
    run = home / "runs" / "cut"
    state = read_loop_state(run)
    step = state.checkpoints[-1].step
    v = registry.register("cut", name="bigram", checkpoint=str(step))
    run_training(make_job(checkpoint_policy=policy), job_id="cut", host=toy, resume=state)
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert kept == [f"step-{step:06d}", "step-000012"]  # without the pin: only step-000012
    assert verify_run(run).ok
    assert registry.version("bigram", v.version).artifacts[0].sha256 == v.artifacts[0].sha256


def test_a_refused_re_registration_keeps_the_existing_versions_pin(
    train: Callable[..., Path], registry: Registry
) -> None:
    run = train("run-a")
    v = registry.register("run-a", name="bigram", checkpoint="12")
    sha = v.artifacts[0].sha256
    target = run / "checkpoints" / "step-000012" / "state" / "w.npy"
    target.write_bytes(target.read_bytes()[:-1] + b"\x02")
    with pytest.raises(IntegrityError):
        registry.register("run-a", name="bigram", checkpoint="12")
    assert pins.is_pinned(sha)
    assert registry.model("bigram").versions == [1]

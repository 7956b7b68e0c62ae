"""Pins: what checkpoint retention (and any clean-up) must keep. Real runs on the toy backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible_core.errors import ConfigError
from crucible_core.ir import CheckpointPolicy
from crucible_core.plugins import PluginHost
from crucible_core.records import pins
from crucible_core.records.artifacts import read_manifest, verify_run
from crucible_core.train.run import run_training
from tests.test_training_workflow import make_job
from tests.toy_backend import toy_plugin

SHA = "ab" * 32


@pytest.fixture
def toy(host: PluginHost, crucible_home: Path) -> PluginHost:
    host.add_plugin(toy_plugin(), name="toy")
    return host


def test_pin_unpin_and_holders(crucible_home: Path) -> None:
    assert not pins.is_pinned(SHA)
    pins.pin(SHA, "registry:a", note="v1")
    pins.pin(SHA, "registry:a", note="v1 again")  # idempotent per holder
    pins.pin(SHA, "registry:b")
    assert pins.is_pinned(SHA)
    assert sorted(h["holder"] for h in pins.holders(SHA)) == ["registry:a", "registry:b"]
    assert pins.unpin(SHA, "registry:a")
    assert not pins.unpin(SHA, "registry:a")
    assert pins.is_pinned(SHA)
    assert pins.unpin(SHA, "registry:b")
    assert not pins.is_pinned(SHA)
    assert not (crucible_home / "pins" / SHA).exists()  # the last unpin removes the folder


def test_bad_digests_are_refused_and_never_pinned(crucible_home: Path) -> None:
    with pytest.raises(ConfigError, match="not a sha256"):
        pins.pin("../../etc", "x")
    assert not pins.is_pinned("../../etc")
    assert not pins.is_pinned(None)


def _steps(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))


def test_retention_keeps_a_pinned_checkpoint_and_deletes_the_others(
    toy: PluginHost, crucible_home: Path
) -> None:
    keep_all = make_job(
        backend="toyfile", checkpoint_policy=CheckpointPolicy(save_every=4, strategy="all")
    )
    run_training(keep_all, job_id="first", host=toy)
    first = read_manifest(crucible_home / "runs" / "first")
    step4 = next(a for a in first["artifacts"] if a.get("path") == "checkpoints/step-000004/state")
    # The toy backend is deterministic: the same job saves the same bytes at step 4.
    pins.pin(step4["sha256"], "test")
    keep_one = make_job(
        backend="toyfile",
        checkpoint_policy=CheckpointPolicy(save_every=4, keep_last=1, save_best=False),
    )
    run_training(keep_one, job_id="second", host=toy)
    run = crucible_home / "runs" / "second"
    assert _steps(run) == ["step-000004", "step-000012"]  # 8 retired, 4 pinned
    manifest = read_manifest(run)
    paths = [a.get("path") for a in manifest["artifacts"]]
    assert "checkpoints/step-000004/state" in paths
    assert "checkpoints/step-000008/state" not in paths
    assert [c["step"] for c in manifest["checkpoints"]] == [12]  # resume uses the kept one only
    assert verify_run(run).ok

    pins.unpin(step4["sha256"], "test")
    run_training(keep_one, job_id="third", host=toy)
    assert _steps(crucible_home / "runs" / "third") == ["step-000012"]  # regression: unpinned

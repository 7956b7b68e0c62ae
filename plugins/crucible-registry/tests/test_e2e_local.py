"""End to end on crucible-local, through the real ``crucible`` CLI in subprocesses.

Two real training runs of the tiny local model; their final weights become
versions 1 and 2; ``crucible sample models:/dates@production`` samples
whatever the alias holds, and a rollback changes what it samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _job(tmp: Path, seed: int) -> Path:
    text = (REPO / "examples" / "dates-local.toml").read_text()
    text = (
        text.replace("max_steps = 200", "max_steps = 4")
        .replace("save_every = 100", "save_every = 2")
        .replace("every_n_steps = 100", "every_n_steps = 4")
        .replace("seed = 0", f"seed = {seed}")
        .replace('"examples/data/dates.jsonl"', json.dumps(str(REPO / "examples/data/dates.jsonl")))
        .replace('metrics = ["loss", "exact_match"]', 'metrics = ["loss"]')
    )
    path = tmp / f"job-{seed}.toml"
    path.write_text(text)
    return path


@pytest.fixture
def cli(home: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {**os.environ, "CRUCIBLE_HOME": str(home), "CRUCIBLE_STRICT_PLUGINS": "1"}

    def run(*argv: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "crucible_core.cli.main", *argv],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == code, (argv, done.stdout, done.stderr)
        return done

    return run


def _sample(cli, ref: str) -> list[str]:  # type: ignore[no-untyped-def]
    out = cli("sample", ref, "--prompt", "2033-01-18", "--chat", "--temperature", "0",
              "--max-tokens", "12", "--json").stdout  # fmt: skip
    return [c["text"] for c in json.loads(out)]


@pytest.mark.slow
def test_register_alias_sample_and_roll_back_real_local_runs(
    cli, home: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    for seed, run in ((0, "dates-a"), (1, "dates-b")):
        cli("train", str(_job(tmp_path, seed)), "--job-id", run, "--no-progress")
    v1 = json.loads(cli("models", "register", "dates-a", "--name", "dates", "--json").stdout)
    v2 = json.loads(cli("models", "register", "dates-b", "--name", "dates", "--json").stdout)
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v1["artifacts"][0]["sha256"] != v2["artifacts"][0]["sha256"]
    assert v1["metrics"]["steps"] == 4.0
    assert v1["base_model"] == "tiny-llama"
    direct_a, direct_b = _sample(cli, "dates-a"), _sample(cli, "dates-b")
    assert direct_a != direct_b  # two seeds, two models: the alias test below can tell them apart

    cli("models", "alias", "dates", "production", "1", "--reason", "first release")
    assert _sample(cli, "models:/dates@production") == direct_a
    cli("models", "alias", "dates", "production", "2")
    assert _sample(cli, "models:/dates@production") == direct_b
    cli("models", "rollback", "dates", "production", "--reason", "v2 regressed")
    assert _sample(cli, "models:/dates@production") == direct_a
    assert _sample(cli, "models:/dates/2") == direct_b

    unknown = cli("sample", "models:/datez@production", "--prompt", "x", code=4)
    assert "did you mean dates" in unknown.stderr
    # The registered weights are pinned; altering them makes the reference refuse to load.
    weights = Path(v1["artifacts"][0]["run_path"]) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    damaged = cli("sample", "models:/dates@production", "--prompt", "x", code=1)
    assert "no longer matches the sha256" in damaged.stderr

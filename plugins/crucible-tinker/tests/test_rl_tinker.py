"""``crucible train examples/rl-local.toml --backend tinker``: the RL workflow unchanged,
through the real tinker SDK against the project's server (over crucible-local)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from crucible_tinker.server import TinkerServer

from crucible_core.cli.main import main

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "rl-local.toml"


def test_rl_example_runs_unchanged_on_tinker(
    server: TinkerServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("CRUCIBLE_HOME", str(home))
    monkeypatch.setenv("CRUCIBLE_CALL_DEADLINE_S", "90")
    monkeypatch.setenv("TINKER_BASE_URL", server.url)
    monkeypatch.setenv("TINKER_API_KEY", server.api_key)
    # The example as written, cut to 3 steps (the only change: the file's max_steps).
    text = EXAMPLE.read_text().replace("max_steps = 12", "max_steps = 3")
    assert text != EXAMPLE.read_text()
    example = tmp_path / "rl.toml"
    example.write_text(
        text.replace('uri = "data/numbers.jsonl"', f'uri = "{REPO}/examples/data/numbers.jsonl"')
    )
    args = ["train", str(example), "--backend", "tinker", "--job-id", "t", "--json"]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    outcome = json.loads(out[out.index("{") :])["outcome"]
    assert outcome["steps"] == 3

    def events(kind: str) -> list[dict[str, Any]]:
        lines = (home / "runs" / "t" / "telemetry.jsonl").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["kind"] == kind]

    metrics = [e["data"]["metrics"] for e in events("train.step")]
    assert [m["version"] for m in metrics] == [0.0, 0.0, 1.0]  # overlapped, one step stale
    assert [m["staleness"] for m in metrics] == [0.0, 1.0, 1.0]
    assert all(0.0 <= m["reward:mean"] <= 1.0 for m in metrics)
    assert all("kl" in m for m in metrics)
    assert abs(metrics[0]["kl"]) < 1e-3  # the base's samples scored by the base
    samples = events("rl.samples")
    assert [len(e["data"]["samples"]) for e in samples] == [32, 32, 32]
    manifest = json.loads((home / "runs" / "t" / "manifest.json").read_text())
    assert manifest["backend"]["name"] == "tinker"
    assert manifest["sampler_checkpoint"]["uri"].startswith("tinker://")

"""``examples/distill-local.toml`` with ``--backend tinker`` against the project's server: the
student trains through the real tinker SDK while its teacher, a run trained on crucible-local,
samples (mode ``"sft"``) or scores the student's samples (mode ``"on_policy"``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from crucible_tinker.server import TinkerServer

from crucible_core.cli.main import main
from crucible_core.ir import TrainingJob, decode_file, to_builtins

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "distill-local.toml"


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = main([*args, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out[out.index("{") :])


def _events(home: Path, run: str, kind: str) -> list[dict[str, Any]]:
    lines = (home / "runs" / run / "telemetry.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def test_distill_example_on_tinker_with_a_local_teacher(
    server: TinkerServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CRUCIBLE_HOME", str(home))
    monkeypatch.setenv("CRUCIBLE_CALL_DEADLINE_S", "90")
    monkeypatch.setenv("TINKER_BASE_URL", server.url)
    monkeypatch.setenv("TINKER_API_KEY", server.api_key)
    example = decode_file(EXAMPLE, TrainingJob)
    # The teacher the example names (run "dates"): a short local SFT run on the dates.
    teacher: dict[str, Any] = {
        "backend": "local",
        "model_spec": {"name": "tiny-llama", "max_seq_len": 128},
        "adapter_config": to_builtins(example.adapter_config),
        "dataset_spec": {"uri": example.dataset_spec.uri, "limit": 32},
        "learning_config": {
            "batch_size": 8,
            "max_steps": 6,
            "optimizer": {"name": "adamw", "lr": 1e-2},
        },
        "checkpoint_policy": {"save_every": 100},
    }
    (tmp_path / "teacher.json").write_text(json.dumps(teacher))
    _run(["train", str(tmp_path / "teacher.json"), "--job-id", "dates"], capsys)

    # The example as written, cut to 3 steps over 24 prompts.
    raw: dict[str, Any] = to_builtins(example)
    raw["learning_config"]["max_steps"] = 3
    raw["dataset_spec"]["limit"] = 24
    (tmp_path / "student.json").write_text(json.dumps(raw))
    out = _run(
        ["train", str(tmp_path / "student.json"), "--backend", "tinker", "--job-id", "s"], capsys
    )
    outcome = out["outcome"]
    assert outcome["steps"] == 3
    assert outcome["sampler_checkpoint"]["uri"].startswith("tinker://")
    (taught,) = _events(home, "s", "distill.teacher")
    assert taught["data"]["backend"] == "local"
    assert taught["data"]["teacher"].startswith("checkpoint:file://")
    steps = _events(home, "s", "train.step")
    assert len(steps) == 3
    for step in steps:
        assert 0.0 <= step["data"]["metrics"]["agreement"] <= 1.0
        assert "teacher_kl" in step["data"]["metrics"]  # the local teacher returned logprobs
    agreement = outcome["evaluation"]["agreement"]
    assert set(agreement["after"]) == {"exact_match", "token_match", "examples"}

    # On-policy: the student samples on the server, the local teacher scores its tokens.
    raw["distill"]["mode"] = "on_policy"
    raw["distill"]["sampling"].update({"temperature": 1.0, "max_tokens": 8})
    raw["learning_config"]["max_steps"] = 2
    (tmp_path / "on.json").write_text(json.dumps(raw))
    on = _run(["train", str(tmp_path / "on.json"), "--backend", "tinker", "--job-id", "o"], capsys)
    assert on["outcome"]["steps"] == 2
    for step in _events(home, "o", "train.step"):
        metrics = step["data"]["metrics"]
        assert step["data"]["loss"] == metrics["teacher_kl"]
        assert metrics["sampled_tokens"] > 0

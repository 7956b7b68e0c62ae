"""The README's main job learns something a person can check, scored on rows it never saw."""

from __future__ import annotations

import json

import pytest

from crucible_core.ir import TrainingJob, decode_file
from tests.e2e.conftest import ROOT, Cli


@pytest.mark.slow
def test_main_job_raises_the_held_out_score_and_prints_readable_samples(cli: Cli) -> None:
    from crucible_datasets.stages import load_outputs

    proc = cli("train", "examples/dates-local.toml", "--job-id", "main", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\ufffd" not in out
    assert "exact_match 0.00 before training -> " in out
    run = cli.home / "runs" / "main"
    # The weights saved only to score are gone; the final ones stay.
    assert sorted(
        p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith("step-")
    ) == ["final"]
    metrics = json.loads((run / "metrics.json").read_text())
    sampled = metrics["evaluation"]["sampled"]
    before, after = sampled["before"], sampled["after"]
    assert before["examples"] == after["examples"] == 50
    assert before["scores"]["exact_match"] <= 0.1
    assert after["scores"]["exact_match"] >= 0.7
    # The task curve beside the loss curve: step 0, every_n_steps (100), the end, each
    # point naming the checkpoint of its step.
    manifest = json.loads((run / "manifest.json").read_text())
    curve = manifest["sampled_evals"]
    assert [(p["step"], p["when"]) for p in curve] == [(0, "before"), (100, "step"), (200, "after")]
    assert "/checkpoints/step-000100/" in curve[1]["checkpoint"]
    assert curve[2]["checkpoint"] == manifest["last_checkpoint"]["uri"]
    assert [p["scores"]["exact_match"] for p in curve][::2] == [
        before["scores"]["exact_match"], after["scores"]["exact_match"]
    ]  # fmt: skip
    # Honest: every scored row is a validation row, none of which was trained on.
    job = decode_file(ROOT / "examples" / "dates-local.toml", TrainingJob)
    split = load_outputs(job.dataset_spec, job.learning_config.seed)
    trained = {r["messages"][0]["content"] for r in split["train_rows"]}
    held_out = {r["messages"][0]["content"] for r in split["validation_rows"]}
    assert len(held_out) == 50
    assert not trained & held_out
    shown = after["samples"]
    assert shown
    assert {s["input"] for s in shown} <= held_out
    right = [s for s in shown if s["output"] == s["reference"]]
    assert right
    assert f"sample     {right[0]['input']!r} -> {right[0]['output']!r}  (right)" in out
    first = shown[0]["input"]
    assert f'crucible sample main --prompt "{first}" --chat --temperature 0' in out
    sample = cli("sample", "main", "--prompt", first, "--chat", "--temperature", "0", "--json")
    assert sample.returncode == 0, sample.stderr
    assert json.loads(sample.stdout)[0]["text"] == shown[0]["output"]

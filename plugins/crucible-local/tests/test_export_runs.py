"""``crucible export`` of runs these tests train themselves: ``checkpoint_policy.format``
exporting a run's final weights (or refusing an architecture at plan time).

Split from test_export.py (whose tests share one trained run) so the two files run on
different test workers. The export of a bring-your-own hub model is in test_byo_model.py,
on the run trained there.
"""

from __future__ import annotations

import json
from pathlib import Path

from .hfdir import cli, stock_python, write_job


def test_checkpoint_policy_format_gguf_is_planned_and_exports_the_final_weights(
    tmp_path: Path,
) -> None:
    """``checkpoint_policy.format = "gguf"``: plan accepts it for a llama model, and the run
    writes safetensors checkpoints plus a gguf export of its final weights, recorded."""
    import hashlib

    job = write_job(
        tmp_path / "job.toml",
        'name = "tiny-llama"\nmax_seq_len = 128',
        steps=2,
        policy='format = "gguf"',
    )
    home = tmp_path / "home"
    plan = cli(home, "plan", str(job), "--json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    notes = json.loads(plan.stdout)["notes"]
    assert any("also exported as gguf to <run>/exports/gguf" in n for n in notes), notes
    proc = cli(home, "train", str(job), "--job-id", "g", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    run = home / "runs" / "g"
    out = run / "exports" / "gguf"
    assert (out / "model.gguf").is_file()
    assert "run `g`" in (out / "README.md").read_text()
    # Checkpoints themselves stay safetensors.
    assert list((run / "checkpoints").rglob("*.safetensors"))
    manifest = json.loads((run / "manifest.json").read_text())
    [record] = [e for e in manifest["exports"] if e["format"] == "gguf"]
    assert record["path"] == str(out)
    assert record["checkpoint"] == manifest["sampler_checkpoint"]["uri"]
    digest = hashlib.sha256((out / "model.gguf").read_bytes()).hexdigest()
    assert record["files"]["model.gguf"] == digest
    shown = cli(home, "lineage", "show", record["artifact_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert "exported_from" in shown.stdout
    code = f"""
from gguf import GGUFReader
r = GGUFReader({str(out / "model.gguf")!r})
print(sorted(t.name for t in r.tensors)[0])
"""
    assert stock_python(code).strip() == "blk.0.attn_k.weight"


def test_plan_refuses_a_final_export_format_the_architecture_cannot_take(
    tmp_path: Path,
) -> None:
    job = write_job(
        tmp_path / "job.toml",
        'name = "tiny-gpt2"\nmax_seq_len = 128',
        steps=2,
        policy='format = "gguf"',
    )
    proc = cli(tmp_path / "home", "plan", str(job))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    assert "checkpoint_policy.format" in text
    assert "architecture 'gpt2' is not supported" in text
    assert "Traceback" not in text
    # The run refuses it too, before training (no run directory with weights).
    proc = cli(tmp_path / "home", "train", str(job), "--job-id", "x", "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert "architecture 'gpt2'" in proc.stderr

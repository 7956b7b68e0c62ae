"""``crucible export``: a run's weights as directories the stock libraries load, verified.

Real runs (a few steps of the chat job through ``crucible train``), real
exports through the CLI, and real loads: ``--verify`` loads each export with
stock transformers/peft in a fresh process, and these tests load them once
more in their own subprocess (tests/hfdir.py ``cli`` runs the CLI; the
loaders below run ``python -c`` with nothing from Crucible imported).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .hfdir import cli, export_run, stock_python, write_job


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CRUCIBLE_HOME with run ``exp``: tiny-llama (a built-in base), LoRA, 6 steps."""
    root = tmp_path_factory.mktemp("export")
    job = write_job(root / "job.toml", 'name = "tiny-llama"\nmax_seq_len = 128', steps=6)
    home = root / "home"
    proc = cli(home, "train", str(job), "--job-id", "exp", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return home


Export = tuple[Path, dict[str, object]]


# The peft and merged exports (each verified with --verify) are made once and read by more
# than one test: an export is a fresh process that loads the run (~6-20 s on 2 busy cores).
@pytest.fixture(scope="module")
def peft_export(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Export:
    """``exp`` exported ``--format peft --verify``: its directory and JSON record."""
    out = tmp_path_factory.mktemp("peft-export") / "peft"
    return out, export_run(trained, "--format", "peft", "--out", str(out), "--verify")


@pytest.fixture(scope="module")
def merged_export(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Export:
    """``exp`` exported ``--format merged --verify``: its directory and JSON record."""
    out = tmp_path_factory.mktemp("merged-export") / "merged"
    return out, export_run(trained, "--format", "merged", "--out", str(out), "--verify")


_GREEDY = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
{load}
assert not any(m.startswith("crucible") for m in sys.modules), "imported crucible"
ids = tok("The quick brown", return_tensors="pt")["input_ids"]
print(model(input_ids=ids).logits[0, -1].argmax().item())
"""


def test_peft_export_of_a_builtin_base_loads_offline_as_a_directory_pair(
    trained: Path, peft_export: Export
) -> None:
    out, record = peft_export
    verification = record["verification"]
    assert isinstance(verification, dict)
    assert verification["ok"] is True
    assert verification["max_abs_diff"] <= 1e-4
    config = json.loads((out / "adapter_config.json").read_text())
    # The built-in base exists only in code: the export wrote it beside the adapter.
    assert config["base_model_name_or_path"] == str(out / "base")
    assert (out / "base" / "config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    assert (
        "chat_template" in (out / "tokenizer_config.json").read_text()
        or (out / "chat_template.jinja").is_file()
    )
    card = (out / "README.md").read_text()
    assert "run `exp`" in card
    assert "PeftModel.from_pretrained" in card
    assert str(out) in card
    # The card's own load code, run as a user would, in a fresh process.
    load = (
        card.split("```python\n", 1)[1].split("```", 1)[0].replace("model = Peft", "model = Peft")
    )
    stock_python(load + "\ntok = tokenizer\nprint(type(model).__name__)\n")
    files = record["files"]
    assert isinstance(files, dict)
    assert "adapter_model.safetensors" in files
    manifest = json.loads((trained / "runs" / "exp" / "manifest.json").read_text())
    exports = [e for e in manifest["exports"] if e["path"] == str(out)]
    assert exports
    assert exports[0]["verification"]["ok"] is True
    assert exports[0]["files"] == files


def test_merged_export_is_sharded_and_loads_with_automodel_alone(
    merged_export: Export,
    peft_export: Export,
) -> None:
    out, record = merged_export
    verification = record["verification"]
    assert isinstance(verification, dict)
    assert verification["ok"] is True
    assert (out / "model.safetensors.index.json").is_file()
    assert list(out.glob("model-*-of-*.safetensors"))
    assert (out / "generation_config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    # One fresh process, still without Crucible, loads the merged export with AutoModel alone
    # and the adapter export through peft: the same next token.
    peft_out, _ = peft_export
    merged, via_peft = stock_python(
        _GREEDY.format(
            load=f"model = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
            f"tok = AutoTokenizer.from_pretrained({str(out)!r})"
        )
        + _GREEDY.format(
            load="from peft import AutoPeftModelForCausalLM\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained({str(peft_out)!r})\n"
            f"tok = AutoTokenizer.from_pretrained({str(peft_out)!r})"
        )
    ).split()
    assert merged == via_peft


def test_safetensors_full_export_is_one_file_and_is_recorded_in_lineage(
    trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "full"
    record = export_run(trained, "--format", "safetensors-full", "--out", str(out), "--verify")
    assert (out / "model.safetensors").is_file()
    assert not (out / "model.safetensors.index.json").exists()
    # Loaded by its stock loader alone, in a fresh process.
    stock = stock_python(
        _GREEDY.format(
            load=f"model = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
            f"tok = AutoTokenizer.from_pretrained({str(out)!r})"
        )
    )
    assert stock.strip().isdigit()
    artifact = record["artifact_id"]
    assert isinstance(artifact, str)
    assert artifact.startswith("sha256:")
    proc = cli(trained, "lineage", "show", artifact, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "exported_from" in proc.stdout


def test_onnx_export_runs_in_onnxruntime_with_the_runs_logprobs(
    trained: Path,
    merged_export: Export,
    tmp_path: Path,
) -> None:
    out = tmp_path / "onnx"
    record = export_run(trained, "--format", "onnx", "--out", str(out), "--verify")
    verification = record["verification"]
    assert isinstance(verification, dict)
    assert verification["ok"] is True
    assert verification["loader"].startswith("onnxruntime")
    assert verification["max_abs_diff"] <= 1e-3
    merged, _ = merged_export
    code = f"""
import numpy, onnxruntime, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
assert not any(m.startswith("crucible") for m in sys.modules)
tok = AutoTokenizer.from_pretrained({str(out)!r})
ids = tok("The quick brown fox", return_tensors="np")["input_ids"].astype(numpy.int64)
onnx = onnxruntime.InferenceSession({str(out / "model.onnx")!r}).run(None, {{"input_ids": ids}})[0]
ref = AutoModelForCausalLM.from_pretrained({str(merged)!r})(input_ids=torch.from_numpy(ids)).logits
print(float(numpy.abs(onnx - ref.detach().numpy()).max()))
"""
    assert float(stock_python(code)) < 1e-3


def test_gguf_export_holds_every_merged_tensor_and_the_tokenizer(
    trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gguf"
    record = export_run(trained, "--format", "gguf", "--out", str(out), "--verify")
    verification = record["verification"]
    assert isinstance(verification, dict)
    assert verification["ok"] is True
    assert verification["max_abs_diff"] == 0.0
    code = f"""
import sys
from gguf import GGUFReader
r = GGUFReader({str(out / "model.gguf")!r})
names = {{t.name for t in r.tensors}}
assert "token_embd.weight" in names and "blk.1.attn_q.weight" in names, names
arch = r.fields["general.architecture"]
print(bytes(arch.parts[arch.data[0]]).decode(), len(r.fields["tokenizer.ggml.tokens"].data))
"""
    assert stock_python(code).split() == ["llama", "263"]


def test_bad_input_is_a_usage_error_naming_the_fix(trained: Path, tmp_path: Path) -> None:
    proc = cli(
        trained,
        "export",
        "exp",
        "--checkpoint",
        "finl",
        "--format",
        "merged",
        "--out",
        str(tmp_path / "x"),
    )
    assert proc.returncode == 2, proc.stderr
    assert "closest: final" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli(trained, "export", "exq", "--format", "merged", "--out", str(tmp_path / "x"))
    assert proc.returncode == 4, proc.stderr
    assert "closest runs: exp" in proc.stderr
    gpt2 = tmp_path / "gpt2"
    job = write_job(tmp_path / "gpt2.toml", 'name = "tiny-gpt2"\nmax_seq_len = 128', steps=2)
    assert cli(trained, "train", str(job), "--job-id", "g", "--no-progress").returncode == 0
    proc = cli(trained, "export", "g", "--format", "gguf", "--out", str(gpt2))
    assert proc.returncode == 2, proc.stderr
    assert "--format gguf: architecture 'gpt2' is not supported" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not gpt2.exists()
    assert not list(tmp_path.glob(".gpt2.export-*"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    proc = cli(trained, "export", "exp", "--format", "merged", "--out", str(busy))
    assert proc.returncode == 2
    assert "--force" in proc.stderr
    assert (busy / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "x").exists()
    proc = cli(trained, "export", "exp", "--format", "merged", "--out", str(busy), "--force")
    assert proc.returncode == 0, proc.stderr
    assert not (busy / "keep.txt").exists()
    assert (busy / "config.json").is_file()
    # An earlier checkpoint by id.
    proc = cli(
        trained,
        "export",
        "exp",
        "--checkpoint",
        "step-000006",
        "--format",
        "peft",
        "--out",
        str(tmp_path / "s6"),
    )
    assert proc.returncode == 0, proc.stderr


def test_kill_9_during_export_leaves_no_directory_under_the_final_name(
    trained: Path, tmp_path: Path
) -> None:
    """SIGKILL once the temporary directory exists; then a new export cleans it up."""
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crucible_core.cli.main",
            "export",
            "exp",
            "--format",
            "merged",
            "--out",
            str(out),
        ],
        env={**os.environ, "CRUCIBLE_HOME": str(trained), "CRUCIBLE_STRICT_PLUGINS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".killed.export-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "export finished before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(tmp_path.glob(".killed.export-*")), "the temporary directory was never seen"
    assert not out.exists()
    done = cli(trained, "export", "exp", "--format", "merged", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.is_dir()
    assert not list(tmp_path.glob(".killed.export-*"))

"""Bad configurations on the real local backend: a clear message and exit 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crucible_core.ir import TrainingJob, decode_file, encode
from tests.e2e.conftest import ROOT, Cli


def _job(tmp_path: Path, **changes: Any) -> Path:
    raw = json.loads(encode(decode_file(ROOT / "examples" / "sft-local.toml", TrainingJob)))
    raw["learning_config"]["max_steps"] = 2
    raw["dataset_spec"]["uri"] = str(ROOT / "examples" / "data" / "chat.jsonl")
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        raw[section][leaf] = value
    path = tmp_path / "job.json"
    path.write_text(json.dumps(raw))
    return path


def _refused(proc: Any, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_rank_zero(cli: Cli, tmp_path: Path) -> None:
    proc = cli("train", str(_job(tmp_path, adapter_config__rank=0)))
    _refused(proc, "$.adapter_config.rank: expected int >= 1, got 0")


def test_target_module_absent_lists_the_models_modules(cli: Cli, tmp_path: Path) -> None:
    proc = cli("train", str(_job(tmp_path, adapter_config__target_modules=["qkv_proj"])))
    _refused(proc, "qkv_proj", "q_proj", "down_proj")


def test_dataset_rows_missing_fields(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "hi", "reply": "hello"}\n' * 4)
    proc = cli("train", str(_job(tmp_path, dataset_spec__uri=str(data))))
    _refused(proc, "question", "reply")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A home holding run ``short`` (2 steps), trained once for the tests that only sample it:
    a ``crucible train`` is a fresh process that loads the model (~10 s on 2 busy cores)."""
    tmp = tmp_path_factory.mktemp("trained")
    cli = Cli(tmp / "home")
    ok = cli("train", str(_job(tmp)), "--job-id", "short", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    return cli


def test_max_tokens_beyond_the_context(trained: Cli) -> None:
    proc = trained("sample", "short", "--prompt", "hi", "--max-tokens", "100000")
    _refused(proc, "max_tokens")


def test_sample_from_a_checkpoint_directory(trained: Cli) -> None:
    sampler = trained.home / "runs" / "short" / "checkpoints" / "final" / "sampler"
    proc = trained("sample", str(sampler), "--prompt", "What is 2 plus 2?", "--chat", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["tokens"]

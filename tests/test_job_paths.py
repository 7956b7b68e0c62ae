"""Relative paths in a job file resolve against the file's directory, from any cwd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crucible_core.cli.jobs_cmd import load_jobs
from crucible_core.ir import Experiment, TrainingJob, decode_file
from crucible_core.ir.paths import resolve_uri

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A job directory with data and a model dir; the test runs from another directory."""
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "rows.jsonl").write_text('{"text": "hi"}\n')
    (proj / "data" / "rows.csv").write_text("text\nhi\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return proj


def test_resolve_uri_rules(project: Path) -> None:
    rows = str(project / "data" / "rows.jsonl")
    assert resolve_uri("data/rows.jsonl", project) == rows
    assert resolve_uri("./data/../data/rows.jsonl", project) == rows
    assert resolve_uri("csv:data/rows.csv", project) == f"csv:{project / 'data' / 'rows.csv'}"
    # Names, URLs, absolute paths and paths that are not there stay as written.
    for uri in ("sample:chat", "hf://org/set", "org/set", "data/missing.jsonl", "/abs/x.jsonl"):
        assert resolve_uri(uri, project) == uri


def test_decode_file_resolves_against_the_job_file(project: Path) -> None:
    job_file = project / "job.toml"
    job_file.write_text(
        '[model_spec]\nname = "m"\npath = "models/m"\nadapter = "adapters/a"\n'
        '[dataset_spec]\nuri = "data/rows.jsonl"\n'
    )
    job = decode_file(Path("..") / "proj" / "job.toml", TrainingJob)
    assert job.dataset_spec.uri == str(project / "data" / "rows.jsonl")
    assert job.model_spec.path == str(project / "models" / "m")  # a path even if absent
    assert job.model_spec.adapter == str(project / "adapters" / "a")
    exp_file = project / "exp.json"
    exp_file.write_text(json.dumps({"id": "e", "dataset": {"uri": "data/rows.csv"}}))
    exp = decode_file(exp_file, Experiment)
    assert exp.dataset is not None
    assert exp.dataset.uri == str(project / "data" / "rows.csv")
    exp_file.write_text(
        json.dumps({"id": "e", "job": "jobs/base.toml",
                    "evaluation": {"dataset": "data/rows.jsonl", "metrics": ["exact_match"]}})
    )  # fmt: skip
    exp = decode_file(exp_file, Experiment)
    assert exp.job == str(project / "jobs" / "base.toml")  # a path even if absent
    assert exp.evaluation is not None
    assert exp.evaluation.dataset == str(project / "data" / "rows.jsonl")
    inline = {"model_spec": {"name": "m", "path": "models/m"},
              "dataset_spec": {"uri": "data/rows.jsonl"}}  # fmt: skip
    exp_file.write_text(json.dumps({"id": "e", "job": inline}))
    exp = decode_file(exp_file, Experiment)
    assert isinstance(exp.job, TrainingJob)
    assert exp.job.dataset_spec.uri == str(project / "data" / "rows.jsonl")
    assert exp.job.model_spec.path == str(project / "models" / "m")


def test_absolute_and_scheme_uris_stay_as_is(project: Path) -> None:
    (project / "job.json").write_text(
        json.dumps(
            {
                "model_spec": {"name": "m", "path": "/models/m"},
                "dataset_spec": {"uri": "hf://org/set"},
            }
        )
    )
    job = decode_file(project / "job.json", TrainingJob)
    assert job.dataset_spec.uri == "hf://org/set"
    assert job.model_spec.path == "/models/m"


def test_jobs_submit_resolves_bare_and_wrapped_training_jobs(project: Path) -> None:
    (project / "bare.toml").write_text(
        '[model_spec]\nname = "m"\n[dataset_spec]\nuri = "data/rows.jsonl"\n'
    )
    (project / "wrapped.json").write_text(
        json.dumps(
            {
                "kind": "training_run",
                "payload": {
                    "model_spec": {"name": "m"},
                    "dataset_spec": {"uri": "data/rows.jsonl"},
                },
            }
        )
    )
    rows = str(project / "data" / "rows.jsonl")
    for name in ("bare.toml", "wrapped.json"):
        (job,) = load_jobs(Path("..") / "proj" / name)
        assert job.payload["dataset_spec"]["uri"] == rows, name


def test_crucible_plan_works_from_any_directory_and_prints_the_path(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "examples" / "data", proj / "data")
    shutil.copy(ROOT / "examples" / "sft-local.toml", proj / "job.toml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "CRUCIBLE_HOME": str(tmp_path / "home"), "CRUCIBLE_STRICT_PLUGINS": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible_core.cli.main",
            "plan",
            "../proj/job.toml",
            "--no-measure",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert f"dataset   {proj / 'data' / 'chat.jsonl'}\n" in out.stdout

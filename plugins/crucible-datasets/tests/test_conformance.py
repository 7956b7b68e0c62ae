"""crucible-datasets' sources, stage and command against crucible_core's conformance kit."""

from __future__ import annotations

import json
from pathlib import Path

from crucible_core.ir import DatasetSpec, ModelSpec, TrainingJob
from crucible_core.ir.work import Job
from crucible_core.testing import (
    KitStageContext,
    check_command,
    check_dataset_source,
    check_stage,
)
from crucible_datasets.cli import command
from crucible_datasets.sources import CsvSource, JsonlSource
from crucible_datasets.stages import DataLoadStage

ROWS = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(10)]


def _jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_sources_conform(tmp_path: Path) -> None:
    spec = DatasetSpec(uri=str(_jsonl(tmp_path)))
    missing = DatasetSpec(uri=str(tmp_path / "absent.jsonl"))
    assert check_dataset_source(JsonlSource(), spec, min_rows=10, missing=missing) == ROWS
    csv = tmp_path / "train.csv"
    csv.write_text("prompt,completion\nq0,a0\nq1,a1\n")
    rows = check_dataset_source(CsvSource(), DatasetSpec(uri=str(csv)), min_rows=2, missing=missing)
    assert rows[1] == {"prompt": "q1", "completion": "a1"}


def test_data_load_stage_conforms(tmp_path: Path) -> None:
    job = TrainingJob(
        model_spec=ModelSpec(name="m"), dataset_spec=DatasetSpec(uri=str(_jsonl(tmp_path)))
    )
    ctx = KitStageContext(tmp_path, job=Job(id="load-1", kind="training_run", payload=job))
    out = check_stage(DataLoadStage(), ctx)
    assert len(out["rows"]) == 10
    assert out["dataset_hash"].startswith("sha256:")
    assert [kind for kind, _ in ctx.events] == ["data.loaded"] * 2  # two runs; cancelled emits none


def test_datasets_command_conforms(tmp_path: Path) -> None:
    listed = check_command(command, ["list", "--json"], name="datasets")
    assert "jsonl" in listed.stdout
    shown = check_command(command, ["show", str(_jsonl(tmp_path)), "--head", "2"], name="datasets")
    assert "question 0" in shown.stdout
    missing = check_command(
        command, ["show", str(tmp_path / "absent.jsonl")], name="datasets", exit_code=4
    )
    assert missing.error is not None

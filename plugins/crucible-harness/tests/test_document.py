"""The experiment stored with its cells (``experiment_document``) rebuilds the experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _grid(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eval.jsonl").write_text('{"prompt": "1+1", "answer": "2"}\n')
    path = tmp_path / "grid.toml"
    path.write_text(
        'id = "doc-grid"\nseeds = [0, 1]\n'
        f'job = "{ROOT / "examples" / "dates-local.toml"}"\n'
        '[[quality_targets]]\nmetric = "final_loss"\nop = "<="\nvalue = 0.5\n'
        '[evaluation]\ndataset = "data/eval.jsonl"\nmetrics = ["exact_match"]\n'
        '[parameter_grid]\n"learning_config.optimizer.lr" = [0.001, 0.005]\n'
    )
    return path


def test_every_cell_carries_the_experiment_and_it_rebuilds_the_same_cells(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crucible_harness.experiment import DOCUMENT_KEY, cell_job, from_document, load

    loaded = load(_grid(tmp_path))
    jobs = [cell_job(loaded, c) for c in loaded.cells]
    docs = [j.metadata[DOCUMENT_KEY] for j in jobs]
    assert all(d == docs[0] for d in docs)
    json.dumps(docs[0])  # plain data, storable in the queue
    monkeypatch.chdir(home.parent)  # elsewhere: nothing is read relative to the file
    (tmp_path / "grid.toml").unlink()
    again = from_document(docs[0])
    assert [(c.cell_id, c.overrides, c.seed, c.job) for c in again.cells] == [
        (c.cell_id, c.overrides, c.seed, c.job) for c in loaded.cells
    ]
    assert again.evaluation == loaded.evaluation
    assert again.evaluation is not None
    assert again.evaluation.dataset.endswith(str(tmp_path / "data" / "eval.jsonl"))
    assert again.experiment.quality_targets == loaded.experiment.quality_targets


def test_a_document_without_an_inline_job_is_a_config_error() -> None:
    from crucible_harness.experiment import from_document

    from crucible_core.errors import ConfigError

    with pytest.raises(ConfigError, match="stored experiment: job is not an inline"):
        from_document({"id": "x", "job": "train.toml"})

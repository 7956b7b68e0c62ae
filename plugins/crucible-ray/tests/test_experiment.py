"""`crucible experiment run FILE --executor ray`: a grid's cells fan out over Ray.

A 4-cell experiment (two learning rates x two seeds, two steps each) on
crucible-local, run by the real command in this process with the module's
local Ray instance (2 CPUs): every cell is a Ray task (its training run
happens in a Ray worker process, not here), its events come back to the
driver's telemetry, and the quality targets are checked at the end. Needs
crucible-harness installed beside crucible-ray (a test dependency only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from crucible_core.records.events import read_telemetry
from crucible_core.testing import check_command

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_four_cells_run_as_ray_tasks(ray_session: Any, home: Path, tmp_path: Path) -> None:
    from crucible_harness.cli import ExperimentCommand

    text = (
        (REPO / "examples" / "dates-local.toml")
        .read_text()
        .replace("max_steps = 200", "max_steps = 2")
        .replace("save_every = 100", "save_every = 2")
        .replace("every_n_steps = 100", "every_n_steps = 2")
        .replace('"examples/data/dates.jsonl"', json.dumps(str(REPO / "examples/data/dates.jsonl")))
        .replace('metrics = ["loss", "exact_match"]', 'metrics = ["loss"]')
    )
    (tmp_path / "base.toml").write_text(text)
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'id = "ray-grid"\njob = "base.toml"\nseeds = [0, 1]\n'
        '[parameter_grid]\n"learning_config.optimizer.lr" = [1e-3, 5e-3]\n'
        '[[quality_targets]]\nmetric = "steps"\nop = "=="\nvalue = 2\n'
    )
    run = check_command(
        ExperimentCommand(),
        ["run", str(grid), "--executor", "ray", "--workers", "2", "--json"],
        name="experiment",
        timeout=900,
    )
    out = json.loads(run.stdout)
    cells = [c["cell"] for c in out["cells"]]
    assert len(cells) == 4
    assert {c["status"] for c in out["cells"]} == {"succeeded"}
    assert out["missed"] == []  # checked at the end: every cell ran its 2 steps
    assert sorted(p.name for p in (home / "runs").iterdir()) == sorted(cells)
    for cell in cells:
        manifest = json.loads((home / "runs" / cell / "manifest.json").read_text())
        assert manifest["owner"]["pid"] != os.getpid()  # trained in a Ray worker process
        assert manifest["training"]["steps"] == 2
        steps = [e.step for e in read_telemetry(cell) if e.kind == "train.step"]
        assert steps == [1, 2]  # streamed back to the driver's telemetry
    lrs = {
        json.loads((home / "runs" / c / "manifest.json").read_text())["training_job"][
            "learning_config"
        ]["optimizer"]["lr"]
        for c in cells
    }
    assert lrs == {1e-3, 5e-3}
    # Again: nothing is submitted or run twice.
    again = check_command(
        ExperimentCommand(),
        ["run", str(grid), "--executor", "ray", "--workers", "2", "--json"],
        name="experiment",
        timeout=120,
    )
    assert not any(c["new"] for c in json.loads(again.stdout)["cells"])

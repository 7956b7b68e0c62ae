"""``crucible experiment`` end to end on crucible-local through the real CLI: a 2x2 grid x
2 seeds submitted to the durable queue, run by two real ``crucible worker`` processes,
one of them killed with SIGKILL mid-cell; submitting again adds nothing and the
remaining cells finish, each cell run to success once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

GRID = """id = "dates-grid"
seeds = [0, 1]
metadata = { job = "base.toml" }

[parameter_grid]
"learning_config.optimizer.lr" = [1e-3, 5e-3]
"learning_config.batch_size" = [4, 8]
"""


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
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
    (tmp_path / "grid.toml").write_text(GRID)
    env = {
        **os.environ,
        "CRUCIBLE_HOME": str(tmp_path / "home"),
        "CRUCIBLE_STRICT_PLUGINS": "1",
        "CRUCIBLE_CACHE_DIR": str(tmp_path / "cache"),
    }
    argv0 = [sys.executable, "-m", "crucible_core.cli.main"]

    def cli(*argv: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*argv0, *argv], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == code, (argv, done.stdout, done.stderr)
        return done

    def spawn(*argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*argv0, *argv], env=env, cwd=tmp_path, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    return tmp_path, cli, spawn


def _status(cli) -> dict[str, str]:  # type: ignore[no-untyped-def]
    out = json.loads(cli("experiment", "status", "grid.toml", "--json").stdout)
    return {c["cell"]: c["status"] for c in out["cells"]}


@pytest.mark.slow
def test_grid_survives_a_killed_worker_and_reruns_only_missing_cells(world) -> None:  # type: ignore[no-untyped-def]
    tmp, cli, spawn = world
    planned = json.loads(cli("experiment", "run", "grid.toml", "--dry-run", "--json").stdout)
    assert len(planned["cells"]) == 8
    assert planned["estimate"]["duration_s"] > 0  # crucible plan measured a step per cell
    assert all(c["steps"] == 2 for c in planned["cells"])
    assert set(_status(cli).values()) == {"not submitted"}  # dry run submits nothing

    first = json.loads(cli("experiment", "run", "grid.toml", "--json").stdout)
    assert [c["new"] for c in first["cells"]] == [True] * 8

    victim = spawn("worker", "--lease", "3")
    deadline = time.monotonic() + 120
    while "running" not in _status(cli).values():  # kill it in the middle of a cell
        assert time.monotonic() < deadline, "the worker never started a cell"
        time.sleep(0.2)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)

    again = json.loads(cli("experiment", "run", "grid.toml", "--json").stdout)
    assert not any(c["new"] for c in again["cells"])  # nothing submitted twice

    workers = [spawn("worker", "--exit-when-idle", "--lease", "3") for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=600) == 0
    final = _status(cli)
    assert set(final.values()) == {"succeeded"}
    runs = sorted(p.name for p in (tmp / "home" / "runs").iterdir())
    assert runs == sorted(final)  # one run directory per cell, no extra runs
    lrs = set()
    for run in runs:
        manifest = json.loads((tmp / "home" / "runs" / run / "manifest.json").read_text())
        job = manifest["training_job"]
        lrs.add(job["learning_config"]["optimizer"]["lr"])
    assert lrs == {1e-3, 5e-3}

    # Quality targets are checked once every cell has finished: exit 1, a table of misses.
    (tmp / "grid.toml").write_text(
        GRID
        + '\n[[quality_targets]]\nmetric = "final_loss"\nop = "<="\nvalue = 100.0\n'
        + '\n[[quality_targets]]\nmetric = "evaluation.eval_loss"\nop = "<="\nvalue = 0.01\n'
        + '\n[[quality_targets]]\nmetric = "evaluation.bleu"\nvalue = 1.0\n'
    )
    out = json.loads(cli("experiment", "status", "grid.toml", "--json", code=1).stdout)
    missed = {(m["cell"], m["target"]) for m in out["missed"]}
    assert missed == {(c, t) for c in final for t in ("evaluation.eval_loss <= 0.01",
                                                       "evaluation.bleu >= 1.0")}  # fmt: skip
    assert {m["observed"] for m in out["missed"] if "bleu" in m["target"]} == {None}
    table = cli("experiment", "status", "grid.toml", code=1).stdout
    assert "missed quality targets:" in table
    assert "not recorded" in table


def test_bad_grid_key_is_exit_2_with_path_and_suggestion(world) -> None:  # type: ignore[no-untyped-def]
    tmp, cli, _ = world
    (tmp / "grid.toml").write_text(GRID.replace("optimizer.lr", "optimzer.lr"))
    err = cli("experiment", "validate", "grid.toml", code=2).stderr
    assert "grid.toml: parameter_grid.learning_config.optimzer.lr" in err
    assert "did you mean 'learning_config.optimizer'" in err
    assert "Traceback" not in err
    (tmp / "grid.toml").write_text(GRID.replace('metadata = { job = "base.toml" }\n', ""))
    err = cli("experiment", "validate", "grid.toml", code=2).stderr
    assert "metadata.job must name the base TrainingJob file" in err

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
job = "base.toml"
seeds = [0, 1]

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

    def cli(
        *argv: str, code: int = 0, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*argv0, *argv], env={**env, **(extra or {})}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == code, (argv, done.stdout, done.stderr)
        return done

    def spawn(*argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*argv0, *argv], env=env, cwd=tmp_path, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    return tmp_path, cli, spawn


def _status(cli) -> dict[str, str]:  # type: ignore[no-untyped-def]
    out = json.loads(cli("experiment", "status", "grid.toml", "--json").stdout)
    return {c["cell"]: c["status"] for c in out["cells"]}


def _queued_states(home: Path) -> list[str]:
    """The statuses of the cells' jobs, read from the queue's database: what the waits
    below poll (every 0.2 s; a ``crucible experiment status`` process each time cost ~1 s
    of CPU). What is asserted still comes from ``crucible experiment status``."""
    import contextlib
    import sqlite3

    if not (home / "crucible.db").exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(home / "crucible.db", timeout=10)) as db:
            return [status for (status,) in db.execute("SELECT status FROM jobs")]
    except sqlite3.OperationalError:  # the runner is still creating the tables
        return []


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
    while "running" not in _queued_states(tmp / "home"):  # kill it in the middle of a cell
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
    (tmp / "grid.toml").write_text(GRID.replace('job = "base.toml"\n', ""))
    err = cli("experiment", "validate", "grid.toml", code=2).stderr
    assert "grid.toml: job must name the base TrainingJob" in err
    (tmp / "grid.toml").write_text(GRID.replace('job = "base.toml"', 'job = "nope.toml"'))
    err = cli("experiment", "validate", "grid.toml", code=4).stderr
    assert "nope.toml" in err


def test_old_metadata_job_form_still_reads_with_a_deprecation_note(world) -> None:  # type: ignore[no-untyped-def]
    tmp, cli, _ = world
    old = GRID.replace('job = "base.toml"', 'metadata = { job = "base.toml" }')
    (tmp / "grid.toml").write_text(old)
    done = cli("experiment", "validate", "grid.toml", "--json")
    assert "metadata.job is deprecated; write job = 'base.toml'" in done.stderr
    old_cells = [c["cell"] for c in json.loads(done.stdout)["cells"]]
    (tmp / "grid.toml").write_text(GRID)
    done = cli("experiment", "validate", "grid.toml", "--json")
    assert "deprecated" not in done.stderr
    assert [c["cell"] for c in json.loads(done.stdout)["cells"]] == old_cells


def test_inline_job_table_is_the_base_job(world) -> None:  # type: ignore[no-untyped-def]
    tmp, cli, _ = world
    base = (tmp / "base.toml").read_text().replace('backend = "local"', "")
    inline = "\n".join(
        f"[job.{line[1:]}" if line.startswith("[") else line for line in base.splitlines()
    )
    (tmp / "grid.toml").write_text(
        GRID.replace('job = "base.toml"\n', "") + '\n[job]\nbackend = "local"\n' + inline
    )
    out = json.loads(cli("experiment", "validate", "grid.toml", "--json").stdout)
    assert len(out["cells"]) == 8
    (tmp / "grid.toml").write_text(GRID + "\n[budget]\nmax_tokens = 5\n")
    err = cli("experiment", "validate", "grid.toml", code=2).stderr
    assert "budget.max_tokens is a limit of one run" in err


EVALUATED = (
    GRID
    + '\n[evaluation]\ndataset = "dates.jsonl"\nmetrics = ["exact_match", "token_f1"]\nn = 2\n'
    + '\n[[quality_targets]]\nmetric = "final_loss"\nop = "<="\nvalue = 100.0\n'
    + '\n[[quality_targets]]\nmetric = "eval.token_f1"\nop = ">"\nvalue = 1.0\n'
)


def _jobs(home: Path) -> dict[str, tuple[str, int]]:
    import sqlite3

    with sqlite3.connect(home / "crucible.db") as db:
        return {i: (s, a) for i, s, a in db.execute("SELECT id, status, attempts FROM jobs")}


@pytest.mark.slow
def test_runner_killed_mid_experiment_reruns_only_missing_cells_and_reports(world) -> None:  # type: ignore[no-untyped-def]
    """The runner itself (``run --workers 2``: two cells at a time in its process, each a
    training run then an evaluation) is killed with SIGKILL once some cells have finished
    and others run; ``run`` again finishes only the rest, checks the targets (exit 1 with
    the missed one), and ``report`` writes the three reports, byte-identical twice."""
    import hashlib
    import shutil

    tmp, cli, spawn = world
    home = tmp / "home"
    shutil.copy(REPO / "examples" / "data" / "dates.jsonl", tmp / "dates.jsonl")
    (tmp / "grid.toml").write_text(EVALUATED)
    runner = spawn("experiment", "run", "grid.toml", "--workers", "2", "--lease", "3")
    deadline = time.monotonic() + 300
    while True:  # kill it once a cell has finished and another one runs
        assert runner.poll() is None, "the runner finished before it could be killed"
        assert time.monotonic() < deadline, "no cell finished in time"
        states = _queued_states(home)
        if "succeeded" in states and "running" in states:
            break
        time.sleep(0.2)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(timeout=30)
    before = {c: s for c, s in _status(cli).items()}
    finished = sorted(c for c, s in before.items() if s == "succeeded")
    assert 0 < len(finished) < 8
    sha = {c: hashlib.sha256((home / "runs" / c / "manifest.json").read_bytes()).hexdigest()
           for c in finished}  # fmt: skip

    again = cli("experiment", "run", "grid.toml", "--workers", "2", "--lease", "3", "--json",
                code=1)  # fmt: skip
    out = json.loads(again.stdout)
    assert not any(c["new"] for c in out["cells"])  # nothing submitted twice
    assert {c["status"] for c in out["cells"]} == {"succeeded"}
    jobs = _jobs(home)
    for cell in finished:  # a cell finished before the kill never ran again
        assert jobs[cell] == ("succeeded", 1)
        digest = hashlib.sha256((home / "runs" / cell / "manifest.json").read_bytes())
        assert digest.hexdigest() == sha[cell]
    assert sorted(p.name for p in (home / "runs").iterdir()) == sorted(before)
    for cell in before:  # every cell was evaluated once trained
        evals = list((home / "runs" / cell).glob("eval-*.json"))
        assert len(evals) >= 1
        assert json.loads(evals[0].read_text())["dataset"] == str(tmp / "dates.jsonl")
    assert {(m["cell"], m["target"]) for m in out["missed"]} == {
        (c, "eval.token_f1 > 1.0") for c in before
    }
    table = cli("experiment", "run", "grid.toml", "--workers", "1", code=1).stdout
    assert "missed quality targets:" in table

    first = json.loads(cli("experiment", "report", "grid.toml", "--out", "r1", "--json").stdout)
    second = json.loads(cli("experiment", "report", "grid.toml", "--out", "r2", "--json").stdout)
    for fmt in ("markdown", "html", "latex"):
        one, two = Path(tmp / first[fmt]).read_bytes(), Path(tmp / second[fmt]).read_bytes()
        assert one == two, fmt  # same inputs, same bytes
        for cell in before:
            digest = hashlib.sha256((home / "runs" / cell / "manifest.json").read_bytes())
            assert digest.hexdigest() in one.decode()
    md = Path(tmp / first["markdown"]).read_text()
    assert "| learning_config.optimizer.lr | metric | n | mean | 95% CI |" in md
    assert "| 0.001 | eval.token_f1 | 4 |" in md  # two batch sizes x two seeds pooled
    page = Path(tmp / first["html"]).read_text()
    assert "Training loss per cell" in page
    assert "Evaluation during training: val_loss per cell" in page
    assert "eval.token_f1 by learning_config.batch_size (mean, 95% CI)" in page
    assert page.count('src="data:image/png;base64,') >= 1 + 1 + 2 * 3
    tex = Path(tmp / first["latex"]).read_text()
    assert "\\begin{tabular}" in tex
    assert "learning\\_config.batch\\_size & metric & n & mean & 95\\% CI \\\\" in tex


@pytest.mark.slow
def test_time_budget_stops_new_cells_and_lets_the_running_one_finish(world) -> None:  # type: ignore[no-untyped-def]
    """budget.max_wall_time = 1 s on 8 two-step cells run one at a time: the first cell
    (seconds: it loads the model) outlives the budget, finishes, and no other cell starts."""
    tmp, cli, _ = world
    (tmp / "grid.toml").write_text(GRID + "\n[budget]\nmax_wall_time = 1\n")
    out = json.loads(cli("experiment", "run", "grid.toml", "--workers", "1", "--json").stdout)
    statuses = [c["status"] for c in out["cells"]]
    assert statuses.count("succeeded") == 1
    assert statuses.count("cancelled") == 7
    assert sorted(out["stopped_by_time"]) == sorted(
        c["cell"] for c in out["cells"] if c["status"] == "cancelled"
    )
    runs = [p.name for p in (tmp / "home" / "runs").iterdir()]
    assert runs == [c["cell"] for c in out["cells"] if c["status"] == "succeeded"]


def test_cost_budget_keeps_the_cells_whose_summed_estimate_fits(world) -> None:  # type: ignore[no-untyped-def]
    """crucible-local is free, so the plans here are made up: within_budget is the rule
    ``run`` applies to crucible plan's estimates before submitting anything."""
    from crucible_harness.experiment import CellPlan, load, within_budget

    tmp, _, _ = world
    (tmp / "grid.toml").write_text(GRID + "\n[budget]\nmax_cost = 1.0\n")
    loaded = load(tmp / "grid.toml")
    plans = [CellPlan(c, True, 0.3, 1.0, 2, []) for c in loaded.cells]
    assert within_budget(loaded, plans) == loaded.cells[:3]  # 0.9 <= 1.0 < 1.2
    free = [CellPlan(c, True, None, 1.0, 2, []) for c in loaded.cells]
    assert within_budget(loaded, free) == loaded.cells
    (tmp / "grid.toml").write_text(GRID)
    assert within_budget(load(tmp / "grid.toml"), plans) == loaded.cells  # no budget


def test_report_open_writes_and_opens_the_html_page(world) -> None:  # type: ignore[no-untyped-def]
    """``--open`` hands the page to the browser $BROWSER names (here a script recording
    its argument); a report before any cell ran lists them as not submitted."""
    tmp, cli, _ = world
    opened = tmp / "opened.txt"
    browser = tmp / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    done = cli("experiment", "report", "grid.toml", "--out", "rep", "--open",
               extra={"BROWSER": str(browser)})  # fmt: skip
    assert "wrote rep/report.html" in done.stdout
    deadline = time.monotonic() + 30
    while not opened.exists():
        assert time.monotonic() < deadline, "the browser was never started"
        time.sleep(0.1)
    assert opened.read_text().strip() == (tmp / "rep" / "report.html").resolve().as_uri()
    md = (tmp / "rep" / "report.md").read_text()
    assert md.count("| not submitted |") == 8
    cli("experiment", "report", "grid.toml", "--out", "rep2")
    for name in ("report.md", "report.html", "report.tex"):
        assert (tmp / "rep" / name).read_bytes() == (tmp / "rep2" / name).read_bytes()


def test_run_flags_that_do_not_fit_are_usage_errors(world) -> None:  # type: ignore[no-untyped-def]
    _, cli, _ = world
    err = cli("experiment", "run", "grid.toml", "--executor", "ray", code=2).stderr
    assert "--executor runs cells in this process: add --workers N" in err
    err = cli("experiment", "status", "grid.toml", "--workers", "2", code=2).stderr
    assert "--workers applies to run only" in err
    err = cli("experiment", "run", "grid.toml", "--open", code=2).stderr
    assert "--out and --open apply to report only" in err

"""The runner API (init / run_stage / get_results / cleanup) on crucible-local, in this
process: two real two-step training runs with their evaluation, the queue in a
temporary CRUCIBLE_HOME, the reports, the stage telemetry, and a second runner on the
same file that finds everything done."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from crucible_harness.runner import Runner

from crucible_core.errors import ConfigError
from crucible_core.records.events import Event

REPO = Path(__file__).resolve().parents[3]
DATES = str(REPO / "examples" / "data" / "dates.jsonl")


def _files(tmp: Path) -> Path:
    text = (
        (REPO / "examples" / "dates-local.toml")
        .read_text()
        .replace("max_steps = 200", "max_steps = 2")
        .replace("save_every = 100", "save_every = 2")
        .replace("every_n_steps = 100", "every_n_steps = 2")
        .replace('"examples/data/dates.jsonl"', json.dumps(DATES))
        .replace('metrics = ["loss", "exact_match"]', 'metrics = ["loss"]')
    )
    (tmp / "base.toml").write_text(text)
    path = tmp / "exp.toml"
    path.write_text(
        'id = "api"\njob = "base.toml"\n'
        '[parameter_grid]\n"learning_config.optimizer.lr" = [1e-3, 5e-3]\n'
        f'[evaluation]\ndataset = {json.dumps(DATES)}\nmetrics = ["exact_match"]\nn = 2\n'
        '[[quality_targets]]\nmetric = "eval.exact_match"\nop = "<="\nvalue = 1.0\n'
    )
    return path


@pytest.mark.slow
def test_init_run_stage_get_results_cleanup(home: Path, tmp_path: Path) -> None:
    path = _files(tmp_path)
    events: list[Event] = []
    lock = threading.Lock()

    def keep(event: Event) -> None:
        with lock:
            events.append(event)

    runner = Runner.init(path, workers=2)
    runner.bus.subscribe(keep, name="test")
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        runner.run_stage("trian")
    outcome = runner.run_stage("train")
    assert {s.status for s in outcome.statuses} == {"succeeded"}
    assert len(outcome.submitted) == 2
    evals = {c: sorted((home / "runs" / c).glob("eval-*.json")) for c in outcome.submitted}
    assert all(len(v) == 1 for v in evals.values())  # each cell evaluated once trained
    ids = runner.run_stage("eval")  # nothing left to evaluate: the cells' own evaluations
    assert ids == {c: v[0].stem for c, v in evals.items()}
    assert {c: sorted((home / "runs" / c).glob("eval-*.json")) for c in ids} == evals
    reports = runner.run_stage("report", {"out": tmp_path / "reports"})
    assert sorted(p.name for p in reports.values()) == ["report.html", "report.md", "report.tex"]
    results = runner.get_results()
    assert results.finished
    assert results.missed == []
    assert results.reports == reports
    assert {c.cell_id for c in results.cells} == set(outcome.submitted)
    for cell in results.cells:
        assert 0.0 <= cell.metrics["eval.exact_match"] <= 1.0
        assert cell.metrics["steps"] == 2
    runner.cleanup()
    runner.cleanup()  # idempotent
    with pytest.raises(ConfigError, match="cleaned up"):
        runner.run_stage("train")
    stages = [(e.data["stage"], e.data["state"]) for e in events if e.kind == "experiment.stage"]
    assert stages == [  # an unknown stage is refused before it starts
        ("train", "start"), ("train", "end"), ("eval", "start"), ("eval", "end"),
        ("report", "start"), ("report", "end"),
    ]  # fmt: skip
    steps = {(e.job_id, e.step) for e in events if e.kind == "train.step"}
    assert steps == {(c, s) for c in outcome.submitted for s in (1, 2)}

    with Runner.init(path, workers=1) as again:  # a later program: nothing to redo
        second = again.run_stage("train")
        assert second.submitted == []
        assert again.get_results().cells == results.cells


def test_bad_stage_options_are_config_errors(home: Path, tmp_path: Path) -> None:
    with Runner.init(_files(tmp_path), workers=0) as runner:
        with pytest.raises(ConfigError, match="unknown option"):
            runner.run_stage("report", {"ouput": "x"})
        with pytest.raises(ConfigError, match="metrics"):
            runner.run_stage("eval", {"dataset": DATES})
        assert [c.status for c in runner.get_results().cells] == ["not submitted"] * 2
    (tmp_path / "bad.toml").write_text('id = "bad"\n')
    with pytest.raises(ConfigError, match="job must name the base TrainingJob"):
        Runner.init(tmp_path / "bad.toml")

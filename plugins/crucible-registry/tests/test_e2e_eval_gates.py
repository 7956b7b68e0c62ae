"""Promotion gates on real ``crucible eval`` results, end to end through the CLI in subprocesses.

Two real runs of the README's tiny crucible-local job (examples/dates-local.toml,
shortened): one of 2 steps (barely trained), one of 60 (answers in the right
format). Each is evaluated by crucible-harness's ``crucible eval``; the eval
files are attached to their versions (``register --eval`` and ``models evals
import``), and the gates of ``production`` (a threshold and "not worse than
holder with p < 0.05", whose p comes from crucible-harness's statistics)
let the better version in and keep the worse one out, with the evidence
(values, eval ids, p-values, the test) stored with the move.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
DATES = str(REPO / "examples" / "data" / "dates.jsonl")

Cli = Callable[..., subprocess.CompletedProcess[str]]


def _job(tmp: Path, steps: int) -> Path:
    text = (
        (REPO / "examples" / "dates-local.toml")
        .read_text()
        .replace("max_steps = 200", f"max_steps = {steps}")
        .replace("save_every = 100", f"save_every = {steps}")
        .replace("every_n_steps = 100", f"every_n_steps = {steps}")
        .replace('"examples/data/dates.jsonl"', json.dumps(DATES))
        .replace('metrics = ["loss", "exact_match"]', 'metrics = ["loss"]')
    )
    path = tmp / f"job-{steps}.toml"
    path.write_text(text)
    return path


@pytest.fixture
def cli(home: Path, tmp_path: Path) -> Cli:
    env = {**os.environ, "CRUCIBLE_HOME": str(home), "CRUCIBLE_STRICT_PLUGINS": "1"}

    def run(*argv: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "crucible_core.cli.main", *argv],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == code, (argv, done.stdout, done.stderr)
        return done

    return run


def _eval(cli: Cli, ref: str) -> dict[str, Any]:
    out = cli("eval", ref, "--dataset", DATES, "--metric", "token_f1", "--n", "30",
              "--json").stdout  # fmt: skip
    return json.loads(out)


def _score(result: dict[str, Any]) -> float:
    return next(m["score"] for m in result["metrics"] if m["name"] == "token_f1")


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two trainings and two evaluations on a shared 2-core machine
def test_eval_results_gate_a_promotion_end_to_end(cli: Cli, tmp_path: Path) -> None:
    cli("train", str(_job(tmp_path, 2)), "--job-id", "weak", "--no-progress")
    cli("train", str(_job(tmp_path, 60)), "--job-id", "strong", "--no-progress")
    weak_eval = _eval(cli, "weak")

    # register --eval attaches the run's evaluation; the suite is the dataset's name.
    v1 = json.loads(cli("models", "register", "weak", "--name", "dates", "--eval",
                        weak_eval["path"], "--json").stdout)  # fmt: skip
    assert v1["version"] == 1
    [rec] = json.loads(cli("models", "evals", "list", "dates/1", "--json").stdout)
    assert rec["eval_id"] == weak_eval["eval_id"]
    assert rec["metrics"] == {"eval.dates.token_f1": pytest.approx(_score(weak_eval))}
    assert len(rec["samples"]["eval.dates.token_f1"]) == 30
    cli("models", "alias", "dates", "production", "1", "--reason", "first")

    # The second version is evaluated through its registry URI, then the file is imported.
    cli("models", "register", "strong", "--name", "dates")
    strong_eval = _eval(cli, "models:/dates/2")
    assert strong_eval["run_id"] == "strong"
    # An evaluation of another run's weights is refused, nothing recorded.
    wrong = cli("models", "evals", "import", "dates/2", weak_eval["path"], code=2)
    assert "is of run weak" in wrong.stderr
    assert json.loads(cli("models", "evals", "list", "dates/2", "--json").stdout) == []
    cli("models", "evals", "import", "dates/2", strong_eval["eval_id"])  # by id
    again = json.loads(
        cli("models", "evals", "import", "dates/2", strong_eval["path"], "--json").stdout
    )
    assert len(again) == 1  # the same eval id again: the first record
    assert len(json.loads(cli("models", "evals", "list", "dates/2", "--json").stdout)) == 1

    weak, strong = _score(weak_eval), _score(strong_eval)
    assert strong > weak + 0.1  # 60 steps learn the answer's format, 2 do not
    threshold = round((weak + strong) / 2, 4)
    cli("models", "gate", "add", "dates", "production",
        f"eval.dates.token_f1 >= {threshold}",
        "eval.* not worse than holder with p < 0.05")  # fmt: skip

    # Up: strong passes both rules; the evidence is stored with the move.
    cli("models", "alias", "dates", "production", "2", "--reason", "better")
    shown = json.loads(cli("models", "show", "dates", "--json").stdout)
    move = [e for e in shown["history"] if e["alias"] == "production"][-1]
    assert (move["version"], move["forced"]) == (2, False)
    evidence = {r["rule"]: r for r in move["evidence"]}
    threshold_rule = evidence[f"eval.dates.token_f1 >= {threshold!r}"]
    assert threshold_rule["passed"]
    [obs] = threshold_rule["observed"]
    assert obs["value"] == pytest.approx(strong)
    assert obs["eval_id"] == strong_eval["eval_id"]
    stat = evidence["eval.* not worse than holder with p < 0.05"]
    [obs] = stat["observed"]
    assert stat["passed"]
    assert (obs["eval_id"], obs["holder_eval_id"]) == (strong_eval["eval_id"], weak_eval["eval_id"])
    assert obs["p_value"] > 0.5  # better, not worse
    assert obs["test"]  # the harness's choice of test is recorded

    # Down: moving back to weak fails both rules, prints each with what it saw, moves nothing.
    refused = cli("models", "alias", "dates", "production", "1", code=1)
    assert f"FAIL eval.dates.token_f1 >= {threshold!r}: eval.dates.token_f1=" in refused.stderr
    seen = re.search(
        r"FAIL eval\.\* not worse than holder with p < 0\.05: "
        r"eval\.dates\.token_f1=\S+ \(holder \S+\) p=(\S+) \(",
        refused.stderr,
    )
    assert seen is not None, refused.stderr
    assert float(seen.group(1)) < 0.05
    shown = json.loads(cli("models", "show", "dates", "--json").stdout)
    assert shown["aliases"]["production"] == 2
    # --force with a reason overrides, and the failing evidence is kept with the move.
    cli("models", "alias", "dates", "production", "1", "--force", "--reason", "demo rollback")
    shown = json.loads(cli("models", "show", "dates", "--json").stdout)
    forced = [e for e in shown["history"] if e["alias"] == "production"][-1]
    assert (forced["version"], forced["forced"]) == (1, True)
    assert not all(r["passed"] for r in forced["evidence"])

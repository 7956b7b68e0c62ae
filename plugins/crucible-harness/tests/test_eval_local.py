"""``crucible eval`` and ``crucible eval-compare`` end to end on crucible-local, through the
real CLI in subprocesses: a real (shortened) run of examples/dates-local.toml against the
same model's untrained base weights."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
DATES = str(REPO / "examples" / "data" / "dates.jsonl")

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Cli]:
    """A CRUCIBLE_HOME holding one real 60-step run ``dates-a`` (module scope: ~30 s)."""
    tmp = tmp_path_factory.mktemp("eval")
    home = tmp / "home"
    env = {
        **os.environ,
        "CRUCIBLE_HOME": str(home),
        "CRUCIBLE_STRICT_PLUGINS": "1",
        "CRUCIBLE_CACHE_DIR": str(tmp / "cache"),
    }

    def cli(*argv: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "crucible_core.cli.main", *argv],
            env=env, cwd=tmp, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == code, (argv, done.stdout, done.stderr)
        return done

    text = (
        (REPO / "examples" / "dates-local.toml")
        .read_text()
        .replace("max_steps = 200", "max_steps = 60")
        .replace("save_every = 100", "save_every = 60")
        .replace("every_n_steps = 100", "every_n_steps = 60")
        .replace('"examples/data/dates.jsonl"', json.dumps(DATES))
        .replace('metrics = ["loss", "exact_match"]', 'metrics = ["loss"]')
    )
    job = tmp / "job.toml"
    job.write_text(text)
    cli("train", str(job), "--job-id", "dates-a", "--no-progress")
    return home, cli


def _eval(cli: Cli, *extra: str) -> dict[str, object]:
    out = cli("eval", "dates-a", "--dataset", DATES, "--metric", "exact_match,token_f1",
              "--n", "30", "--json", *extra).stdout  # fmt: skip
    return json.loads(out)


@pytest.mark.slow
def test_trained_vs_untrained_eval_files_lineage_and_report(
    world: tuple[Path, Cli], tmp_path: Path
) -> None:
    home, cli = world
    trained, base = _eval(cli), _eval(cli, "--base")
    for result in (trained, base):
        path = Path(str(result["path"]))
        assert path.parent == home / "runs" / "dates-a"
        assert path.name == f"{result['eval_id']}.json"
        assert json.loads(path.read_text())["dataset_hash"] == result["dataset_hash"]
        assert len(result["examples"]) == 30  # type: ignore[arg-type]
    assert trained["checkpoint"] is not None
    assert base["checkpoint"] is None
    scores = {
        name: [{m["name"]: m for m in r["metrics"]}[name] for r in (trained, base)]  # type: ignore[index,union-attr]
        for name in ("token_f1", "exact_match")
    }
    # 60 steps teach the format of the answer; random weights write nothing like it.
    assert scores["token_f1"][0]["score"] > scores["token_f1"][1]["score"] + 0.1
    for m in scores["token_f1"]:
        assert m["low"] <= m["mean"] <= m["high"]

    with sqlite3.connect(home / "crucible.db") as db:
        edges = db.execute(
            "SELECT src, dst FROM lineage_edges WHERE kind = 'evaluated_on'"
        ).fetchall()
    assert sorted(edges) == sorted(
        (f"eval:{r['eval_id']}", f"dataset:{r['dataset_hash']}") for r in (trained, base)
    )

    report = tmp_path / "report.md"
    cli("eval-compare", str(trained["eval_id"]), str(trained["path"]).replace(
        str(trained["eval_id"]), str(base["eval_id"])), "--out", str(report))  # fmt: skip
    text = report.read_text()
    assert "The examples are **paired**" in text
    assert "| token_f1 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| token_f1 |"))
    assert "**yes**" in row  # trained beats untrained, significantly
    assert "McNemar's exact test" in text  # exact_match is 0/1 per item, paired
    manifest = home / "runs" / "dates-a" / "manifest.json"
    import hashlib

    assert hashlib.sha256(manifest.read_bytes()).hexdigest() in text
    again = cli("eval-compare", str(trained["eval_id"]), str(base["eval_id"])).stdout
    assert again == text  # byte-identical for the same inputs


@pytest.mark.slow
def test_sample_gsm8k_offline_extracts_final_numbers(world: tuple[Path, Cli]) -> None:
    _, cli = world
    out = json.loads(
        cli(
            "eval",
            "dates-a",
            "--dataset",
            "sample:gsm8k",
            "--metric",
            "exact_match",
            "--n",
            "3",
            "--json",
        ).stdout
    )
    assert out["extract"] == "number"
    assert [e["reference"].rsplit("#### ", 1)[1] for e in out["examples"]] == ["28", "5", "30"]
    assert out["dataset"] == "sample:gsm8k"


@pytest.mark.slow
def test_bad_input_is_a_one_line_usage_error(world: tuple[Path, Cli], tmp_path: Path) -> None:
    _, cli = world
    typo = cli("eval", "dates-a", "--dataset", DATES, "--metric", "exact_mach", code=2)
    assert "no metric named 'exact_mach'" in typo.stderr
    assert "did you mean 'exact_match'" in typo.stderr
    assert "Traceback" not in typo.stderr

    no_answers = tmp_path / "text.jsonl"
    no_answers.write_text('{"text": "2004-03-06"}\n{"text": "1999-12-31"}\n')
    err = cli("eval", "dates-a", "--dataset", str(no_answers), "--metric", "exact_match", code=2)
    assert f"{no_answers}: rows lack the answer field 'completion'" in err.stderr
    assert "the rows have: text" in err.stderr
    assert "Traceback" not in err.stderr

    # The first row has the answer, none of the others do: the field and the file are named.
    mmlu = tmp_path / "mc.jsonl"
    mmlu.write_text('{"question": "Q?", "choices": ["a", "b"]}\n')
    err = cli("eval", "dates-a", "--dataset", str(mmlu), "--preset", "mmlu", "--metric",
              "mc_logprob", code=2)  # fmt: skip
    assert str(mmlu) in err.stderr
    assert "'answer'" in err.stderr
    assert "Traceback" not in err.stderr

    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What is 2 + 2?"}\n')
    err = cli("eval", "dates-a", "--dataset", str(questions), "--metric", "exact_match",
              "--preset", "gsm8k", code=2)  # fmt: skip
    assert "answer" in err.stderr

    cli("eval", "no-such-run", "--dataset", DATES, "--metric", "exact_match", code=4)


def _torch_option_sums(model: Any, items: Any) -> list[list[float]]:
    """Each option's summed reply log-probability, by torch on ``model`` (not the harness)."""
    import torch

    out: list[list[float]] = []
    with torch.no_grad():
        for item in items:
            sums: list[float] = []
            for datum in item.datums:
                logits = model(input_ids=torch.tensor([datum.model_input])).logits[0].float()
                lp = torch.log_softmax(logits, dim=-1)
                pairs = zip(datum.loss_fn_inputs.target_tokens, datum.loss_fn_inputs.weights,
                            strict=True)  # fmt: skip
                sums.append(sum(w * float(lp[i, t]) for i, (t, w) in enumerate(pairs) if w))
            out.append(sums)
    return out


@pytest.mark.slow
def test_mc_logprob_on_a_run_loads_its_last_state_checkpoint(
    world: tuple[Path, Cli], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The letters picked on the trained run are those its final weights prefer (computed
    here with torch on the run's sampler checkpoint), not the base model's."""
    home, cli = world
    trained = json.loads(cli("eval", "dates-a", "--dataset", "sample:mmlu", "--metric",
                             "mc_logprob", "--n", "12", "--json").stdout)  # fmt: skip
    base = json.loads(cli("eval", "dates-a", "--base", "--dataset", "sample:mmlu", "--metric",
                          "mc_logprob", "--n", "12", "--json").stdout)  # fmt: skip
    assert trained["extract"] == base["extract"] == "logprob"
    assert all(e["output"] in "ABCD" and len(e["output"]) == 1 for e in trained["examples"])

    monkeypatch.setenv("CRUCIBLE_HOME", str(home))
    from crucible_datasets.loading import read_dataset
    from crucible_datasets.render import get_renderer
    from crucible_harness.choice import choice_items, pick

    from crucible_core.cli.sample_cmd import resolve_sampler
    from crucible_core.ir import DatasetSpec
    from crucible_core.plugins import get_host

    _, model, checkpoint = resolve_sampler("dates-a")
    backend = get_host().create("backend", "local")
    spec = DatasetSpec(uri="sample:mmlu")
    renderer = get_renderer(None, backend.get_tokenizer(model))
    items = choice_items(read_dataset(spec).rows, renderer, spec, limit=12,
                         max_length=model.max_seq_len)  # fmt: skip
    for weights, result in ((checkpoint, trained), (None, base)):
        sums = _torch_option_sums(backend.load_sampler(model, weights).torch_model, items)
        assert [e["output"] for e in result["examples"]] == [pick(s, "ABCD") for s in sums]

    # Sampler-only weights cannot be loaded into a session: a usage error saying so.
    final = Path(checkpoint.uri.removeprefix("file://"))
    err = cli("eval", str(final), "--dataset", "sample:mmlu", "--metric", "mc_logprob", code=2)
    assert "scoring options loads a state checkpoint" in err.stderr
    assert "Traceback" not in err.stderr


@pytest.mark.slow
def test_bleu_rouge_and_extraction_print_a_table_with_intervals(world: tuple[Path, Cli]) -> None:
    _, cli = world
    table = cli("eval", "dates-a", "--dataset", DATES, "--metric", "bleu,rouge_l,exact_match",
                "--n", "20").stdout  # fmt: skip
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    assert "95% CI" in lines["metric"]
    for name in ("bleu", "rouge_l", "exact_match"):
        assert re.search(r"\[-?[\d.e+-]+, [\d.e+-]+\]", lines[name]), lines[name]
    out = json.loads(cli("eval", "dates-a", "--dataset", "sample:gsm8k", "--metric",
                         "exact_match,bleu", "--n", "4", "--json").stdout)  # fmt: skip
    assert out["extract"] == "number"
    bleu = next(m for m in out["metrics"] if m["name"] == "bleu")
    assert 0.0 <= bleu["low"] <= bleu["mean"] <= bleu["high"] <= 100.0

"""``crucible models ...``: run as the CLI runs it (the conformance kit), exit codes, --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from crucible_registry.cli import ModelsCommand

from crucible_core.testing import check_command, check_light_import


def _run(*argv: str, exit_code: int = 0) -> str:
    return check_command(ModelsCommand(), list(argv), exit_code=exit_code, name="models").stdout


def test_the_whole_cycle_through_the_command(train: Callable[..., Path], home: Path) -> None:
    train("run-a")
    v1 = json.loads(_run("register", "run-a", "--name", "bigram", "--checkpoint", "8", "--json"))
    assert (v1["version"], v1["existing"]) == (1, False)
    _run("register", "run-a", "--name", "bigram", "--checkpoint", "12", "--tag", "lr=0.02")
    again = _run("register", "run-a", "--name", "bigram", "--checkpoint", "12")
    assert again == "already registered as bigram version 2 (run-a/step-12)\n"
    assert _run("alias", "bigram", "production", "1", "--reason", "first") == (
        "bigram@production: nothing -> v1\n"
    )
    _run("alias", "bigram", "production", "2", "--expect", "1")
    _run("alias", "bigram", "production", "1", "--expect", "none", exit_code=1)  # Conflict
    _run("rollback", "bigram", "production", "--expect", "1", exit_code=1)  # holds 2
    back = json.loads(_run("rollback", "bigram", "production", "--expect", "2", "--json"))
    assert (back["action"], back["previous"], back["version"]) == ("rollback", 2, 1)
    assert json.loads(_run("tag", "bigram/2", "eval=ok", "--json")) == {"eval": "ok", "lr": "0.02"}
    _run("archive", "bigram", "1", exit_code=1)  # holds production
    _run("alias", "bigram", "production", "2")
    archived = json.loads(_run("archive", "bigram", "1", "--reason", "old", "--json"))
    assert archived["archived_at"] is not None
    listed = json.loads(_run("list", "--json"))
    assert [(m["name"], m["versions"], m["aliases"]) for m in listed] == [
        ("bigram", [1, 2], {"production": 2})
    ]
    shown = json.loads(_run("show", "bigram", "--json"))
    assert [e["version"] for e in shown["history"]] == [1, 2, 1, 2]
    assert json.loads(_run("show", "models:/bigram@production", "--json"))["tags"] == {
        "lr": "0.02",
        "eval": "ok",
    }
    text = _run("show", "bigram")
    assert "alias history:" in text
    assert "production v2 -> v1 (rollback)" in text


def test_user_mistakes_exit_2_and_unknown_things_exit_4(
    train: Callable[..., Path], home: Path
) -> None:
    train("run-a")
    _run("register", "run-a", "--name", "bigram", "--checkpoint", "12")
    run = check_command(ModelsCommand(), ["show", "bigrm"], exit_code=4, name="models")
    assert run.error is not None
    assert "did you mean bigram" in str(run.error)
    _run("show", "bigram/9", exit_code=4)
    _run("show", "bigram/x", exit_code=2)
    _run("alias", "bigram", "Prod!", "1", exit_code=2)
    _run("register", "run-a", "--name", "bigram", "--tag", "novalue", exit_code=2)
    _run("register", "no-such-run", "--name", "bigram", exit_code=4)
    _run("alias", "bigram", "production", "1", "--expect", "v1", exit_code=2)


def test_the_command_is_registered_and_its_plugin_imports_nothing_heavy(home: Path) -> None:
    check_light_import("crucible_registry.plugin")
    for module in ("crucible_registry.cli", "crucible_registry.lineage"):  # the graph libraries
        check_light_import(module, heavy=("networkx", "pydot", "scipy", "torch", "numpy"))
    env = {**os.environ, "CRUCIBLE_HOME": str(home), "CRUCIBLE_STRICT_PLUGINS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "crucible_core.cli.main", "models", "list", "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert json.loads(out) == []


def test_gates_evaluations_lineage_export_and_gc_through_the_command(
    train: Callable[..., Path], home: Path, tmp_path: Path
) -> None:
    train("run-a")
    _run("register", "run-a", "--name", "bigram", "--checkpoint", "8")
    _run("register", "run-a", "--name", "bigram", "--checkpoint", "12",
         "--from", "dpo_from=bigram/1")  # fmt: skip
    _run("register", "run-a", "--name", "x", "--from", "nonsense", exit_code=2)
    _run("evals", "add", "bigram/1", "exact_match=0.5", "--suite", "gsm8k", "--eval-id", "e1")
    samples = tmp_path / "s.json"
    samples.write_text(json.dumps({"exact_match": [0.0, 1.0, 0.0, 0.0]}))
    _run("evals", "add", "bigram/2", "exact_match=0.25", "--suite", "gsm8k",
         "--samples", str(samples))  # fmt: skip
    listed = json.loads(_run("evals", "list", "bigram/2", "--json"))
    assert listed[0]["samples"] == {"eval.gsm8k.exact_match": [0.0, 1.0, 0.0, 0.0]}
    _run("evals", "add", "bigram/2", "exact_match=high", "--suite", "g", exit_code=2)
    _run("alias", "bigram", "production", "1")
    _run("gate", "add", "bigram", "production", "eval.gsm8k.exact_match >= 0.4",
         "loss <= holder.loss")  # fmt: skip
    _run("gate", "add", "bigram", "production", "eval.gsm8k.exact_match >=", exit_code=2)
    assert _run("gate", "list", "bigram") == (
        "bigram@production: eval.gsm8k.exact_match >= 0.4\nbigram@production: loss <= holder.loss\n"
    )
    check = _run("gate", "check", "bigram", "production", "2", exit_code=1)
    assert "FAIL eval.gsm8k.exact_match >= 0.4: eval.gsm8k.exact_match=0.25\n" in check
    assert [g["rule"] for g in json.loads(_run("show", "bigram", "--json"))["gates"]] == [
        "eval.gsm8k.exact_match >= 0.4",
        "loss <= holder.loss",
    ]
    assert (
        "\ngates:\n  production: eval.gsm8k.exact_match >= 0.4\n  production: loss <= holder.loss\n"
    ) in _run("show", "bigram")
    refused = check_command(ModelsCommand(), ["alias", "bigram", "production", "2"],
                            exit_code=1, name="models")  # fmt: skip
    assert refused.error is not None
    assert "FAIL eval.gsm8k.exact_match >= 0.4: eval.gsm8k.exact_match=0.25" in str(refused.error)
    _run("alias", "bigram", "production", "2", "--force", exit_code=2)  # no --reason
    forced = _run("alias", "bigram", "production", "2", "--force", "--reason", "hotfix")
    assert "forced past the failing gates" in forced
    shown = json.loads(_run("show", "bigram", "--json"))
    last = shown["history"][-1]
    assert last["forced"] is True
    assert last["evidence"][0]["observed"][0]["value"] == 0.25
    assert "FORCED" in _run("show", "bigram")
    assert _run("gate", "rm", "bigram", "production") == "removed 2 gate(s)\n"
    # lineage and export
    tree = _run("lineage", "bigram/2")
    assert "dpo_from models:/bigram/1 (bigram v1)" in tree
    assert "fine_tuned_from model:toy" in tree
    data = json.loads(_run("lineage", "--dataset", "mem", "--json"))
    assert [v["version"] for v in data["trained_on"]] == [1, 2]
    assert [v["aliases"] for v in data["affected"]] == [[], ["production"]]
    _run("lineage", exit_code=2)
    _run("lineage", "bigram/1", "--dataset", "mem", exit_code=2)
    _run("link", "bigram/2", "merged_from", "model:other", "--json")
    _run("link", "bigram/2", "copied_from", "model:other", exit_code=2)
    _run("export", "bigram/2", "--format", "dot", "-o", str(tmp_path / "g.dot"))
    assert '"models:/bigram/2" -> "model:other" [kind="merged_from"]' in (
        (tmp_path / "g.dot").read_text()
    )
    graph = json.loads(_run("export", "--format", "json"))
    assert {"models:/bigram/1", "models:/bigram/2"} <= {n["id"] for n in graph["nodes"]}
    # alias removal, archive, gc
    assert _run("alias", "bigram", "staging", "1") == "bigram@staging: nothing -> v1\n"
    assert _run("alias", "bigram", "staging", "--remove") == "bigram@staging: v1 -> removed\n"
    _run("alias", "bigram", "staging", exit_code=2)  # no version
    _run("archive", "bigram", "1")
    assert "would forget (run with --yes) bigram version 1" in _run("gc")
    gone = json.loads(_run("gc", "--yes", "--json"))
    assert [v["version"] for v in gone["versions"]] == [1]
    assert json.loads(_run("list", "--json"))[0]["versions"] == [2]

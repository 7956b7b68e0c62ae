"""The plugin's registrations, its light import, and ``crucible datasets``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from crucible_core.cli.main import main
from crucible_core.plugins import PluginHost
from crucible_core.testing import check_light_import
from crucible_datasets.registry import METRICS, RENDERERS, SAMPLES, SOURCES


def test_plugin_module_imports_nothing_heavy() -> None:
    check_light_import("crucible_datasets.plugin")


def test_library_modules_do_not_import_pluggy() -> None:
    modules = [
        "crucible_datasets",
        "crucible_datasets.loading",
        "crucible_datasets.sources",
        "crucible_datasets.fields",
        "crucible_datasets.render",
        "crucible_datasets.datums",
        "crucible_datasets.batching",
        "crucible_datasets.splits",
        "crucible_datasets.hashing",
        "crucible_datasets.metrics",
        "crucible_datasets.execution",
        "crucible_datasets.stages",
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import crucible_datasets as cd\n"
        "cd.load_rows, cd.render_datums, cd.iter_batches, cd.dataset_hash\n"
        "print(','.join(m for m in ('pluggy', 'pyarrow', 'datasets', 'transformers', 'sacrebleu') "
        "if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_registrations(host: PluginHost) -> None:
    datasets = host.registrations("dataset")
    for source in SOURCES:
        reg = datasets[source.name]
        assert list(reg.metadata["schemes"]) == list(source.schemes)
        assert hasattr(reg.create(), "iter_rows")
    for sample in SAMPLES:
        reg = datasets[f"sample:{sample.name}"]
        assert reg.metadata["kind"] == "sample"
        assert reg.metadata["rows"] == sample.rows
    assert set(RENDERERS) <= set(host.registrations("renderer"))
    for name in METRICS:
        assert callable(host.get("metric", name).load())
    assert {"data.load", "data.tokenize"} <= set(host.registrations("stage"))
    assert "datasets" in host.registrations("command")
    exact = host.get("metric", "exact_match").load()
    assert exact(["a"], ["A"])["exact_match"] == 1.0


def test_cli_list_show_hash(
    host: PluginHost, capsys: pytest.CaptureFixture[str], write_jsonl: Callable[..., Path]
) -> None:
    assert main(["datasets", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {s["name"] for s in listing["sources"]} >= {"jsonl", "csv", "parquet", "hf-disk", "hf"}
    assert {s["name"] for s in listing["samples"]} == {f"sample:{s.name}" for s in SAMPLES}
    assert main(["datasets", "list"]) == 0
    text = capsys.readouterr().out
    assert "sample:gsm8k" in text
    assert ".parquet" in text

    assert main(["datasets", "show", "sample:gsm8k", "--head", "2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["rows"]) == 2
    assert shown["kind"] == "completion"
    assert shown["columns"] == ["question", "answer"]
    assert main(["datasets", "show", "sample:chat", "--head", "3"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 3
    assert "kind chat" in captured.err

    path = write_jsonl([{"q": "a", "a": "b"}, "bad line"])
    args = ["datasets", "hash", str(path), "--field", "prompt=q", "--field", "completion=a"]
    assert main([*args, "--on-error", "skip", "--json"]) == 0
    hashed = json.loads(capsys.readouterr().out)
    assert hashed["rows"] == 1
    assert hashed["skipped"] == 1
    from crucible_datasets import dataset_hash

    assert hashed["hash"] == dataset_hash([{"q": "a", "a": "b"}])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: malformed JSON" in err
    assert "Traceback" not in err
    assert main(["datasets", "show", str(path.parent / "nope.jsonl")]) == 4
    assert "no such file" in capsys.readouterr().err


def test_cli_bad_input_never_prints_a_traceback(tmp_path: Path) -> None:
    ragged = tmp_path / "r.csv"
    ragged.write_text("prompt,completion\na,b,c\n", encoding="utf-8")
    env = dict(os.environ, CRUCIBLE_PLUGINS="datasets")
    env.pop("CRUCIBLE_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "crucible_core.cli.main", "datasets", "show", str(ragged)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{ragged}:2: ragged row: 3 fields, the header has 2" in proc.stderr
    assert "Traceback" not in proc.stderr

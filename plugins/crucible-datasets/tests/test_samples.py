"""The shipped samples: registered counts, the example copy, regeneration, and correct answers."""

from __future__ import annotations

import ast
import importlib.util
import json
import operator
import random
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from crucible_core.ir.training import DatasetSpec
from crucible_datasets import read_dataset
from crucible_datasets.registry import SAMPLES
from crucible_datasets.sources import sample_info, sample_path

PLUGIN = Path(__file__).resolve().parents[1]
REPO = PLUGIN.parents[1]


@pytest.fixture(scope="module")
def maker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_samples", PLUGIN / "tools" / "make_samples.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("info", SAMPLES, ids=lambda s: s.name)
def test_sample_reads_with_its_registered_shape(info: Any) -> None:
    loaded = read_dataset(DatasetSpec(uri=f"sample:{info.name}"))
    assert len(loaded.rows) == info.rows
    assert loaded.kind == info.kind
    assert loaded.skipped == 0


def test_example_chat_is_the_chat_sample() -> None:
    shipped = sample_path(sample_info("chat")).read_bytes()
    assert (REPO / "examples" / "data" / "chat.jsonl").read_bytes() == shipped


def test_example_dates_is_the_dates_sample() -> None:
    shipped = sample_path(sample_info("dates")).read_bytes()
    assert (REPO / "examples" / "data" / "dates.jsonl").read_bytes() == shipped


def test_dates_sample_answers_are_the_dates_written_out() -> None:
    import datetime

    rows = read_dataset(DatasetSpec(uri="sample:dates")).rows
    questions = [row["messages"][0]["content"] for row in rows]
    assert len(set(questions)) == len(rows)
    for row, question in zip(rows, questions, strict=True):
        d = datetime.date.fromisoformat(question)
        assert row["messages"][1]["content"] == f"{d.day} {d:%B} {d.year}"


def _lines(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def test_samples_regenerate_identically(maker: ModuleType) -> None:
    made = {
        "chat": maker.chat_rows(random.Random(1)),
        "gsm8k": maker.gsm8k_rows(random.Random(2)),
        "mmlu": maker.mmlu_rows(random.Random(3)),
        "humaneval": maker.humaneval_rows(),
        "dates": maker.dates_rows(random.Random(5)),
        "preference": maker.preference_rows(random.Random(4)),
    }
    for name, rows in made.items():
        assert sample_path(sample_info(name)).read_text(encoding="utf-8") == _lines(rows), name


_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
}


def _calc(expr: str) -> float:
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"unexpected expression {expr!r}")

    return ev(ast.parse(expr, mode="eval").body)


def test_gsm8k_sample_arithmetic_is_right() -> None:
    rows = read_dataset(DatasetSpec(uri="sample:gsm8k")).rows
    for row in rows:
        calcs = re.findall(r"<<([^=]+)=([^>]+)>>", row["answer"])
        assert calcs, row
        for expr, value in calcs:
            assert _calc(expr) == float(value), (expr, value)
        final = row["answer"].rsplit("\n#### ", 1)
        assert len(final) == 2
        assert float(final[1]) == float(calcs[-1][1])


def test_mmlu_and_preference_samples_are_well_formed() -> None:
    for row in read_dataset(DatasetSpec(uri="sample:mmlu")).rows:
        assert len(row["choices"]) == 4
        assert len(set(row["choices"])) == 4
        assert 0 <= row["answer"] < 4
        assert row["subject"]
    for row in read_dataset(DatasetSpec(uri="sample:preference")).rows:
        assert row["chosen"] != row["rejected"]

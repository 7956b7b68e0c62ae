"""Field mapping: kind detection, explicit mappings, presets, message forms, row errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crucible_core.errors import ValidationError
from crucible_core.ir.training import DatasetSpec, FieldMap
from crucible_datasets import load_rows, make_adapter, read_dataset
from crucible_datasets.fields import RowError, format_mmlu_prompt, parse_hh


def test_kind_detection_follows_columns() -> None:
    assert make_adapter(FieldMap(), ["messages", "id"]).kind == "chat"
    assert make_adapter(FieldMap(), ["prompt", "completion"]).kind == "completion"
    assert make_adapter(FieldMap(), ["prompt", "label"]).kind == "completion"
    assert make_adapter(FieldMap(), ["text"]).kind == "text"
    assert make_adapter(FieldMap(), ["prompt", "chosen", "rejected"]).kind == "preference"
    # An explicit mapping wins over a default column that also exists.
    adapter = make_adapter(FieldMap(prompt="q", completion="a"), ["messages", "q", "a"])
    assert adapter.kind == "completion"
    assert adapter.used_columns() == ["q", "a"]


def test_missing_mapped_column_lists_available_columns(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl([{"question": "q", "solution": "s"}])
    spec = DatasetSpec(uri=str(path), fields=FieldMap(prompt="question", completion="answer"))
    with pytest.raises(ValidationError) as info:
        load_rows(spec)
    err = info.value
    assert err.path == "$.fields.completion"
    assert "fields.completion is mapped to column 'answer', which is missing" in err.message
    assert "available columns: question, solution" in err.message
    assert f"{path}:1" in err.message


def test_no_known_columns_explains_the_mapping() -> None:
    with pytest.raises(ValidationError) as info:
        make_adapter(FieldMap(), ["question", "solution"])
    assert info.value.path == "$.fields"
    assert "available columns: question, solution" in info.value.message
    assert "preset" in (info.value.hint or "")


def test_bad_rows_name_file_line_and_field(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl(
        [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ]
            },
            {"messages": [{"role": "wizard", "content": "x"}]},
            {"messages": []},
            {"other": 1},
            {"messages": [{"role": "user", "content": {"not": "text"}}]},
            {"messages": [{"role": ["unhashable"], "content": "x"}]},
        ]
    )
    with pytest.raises(ValidationError) as info:
        load_rows(DatasetSpec(uri=str(path)))
    assert info.value.message.startswith(f"{path}:2: `messages[0].role` must be one of")
    assert info.value.path == "$.messages[0].role"
    loaded = read_dataset(DatasetSpec(uri=str(path), on_error="skip"))
    assert len(loaded.rows) == 1
    assert loaded.skipped == 5
    assert "non-empty list" in loaded.skip_reasons[1]
    assert "missing column 'messages'" in loaded.skip_reasons[2]


def test_sharegpt_and_content_parts() -> None:
    adapter = make_adapter(FieldMap(messages="conversations"), ["conversations"])
    ex = adapter(
        {
            "conversations": [
                {"from": "human", "value": "hi"},
                {
                    "from": "gpt",
                    "value": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}],
                },
            ]
        }
    )
    assert ex.messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    with pytest.raises(RowError, match="non-text content part"):
        adapter({"conversations": [{"from": "human", "value": [{"type": "image_url"}]}]})


def test_completion_numbers_and_conversational_prompt() -> None:
    adapter = make_adapter(FieldMap(), ["prompt", "completion"])
    assert adapter({"prompt": "2+2?", "completion": 4}).messages == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    convo = adapter(
        {
            "prompt": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ],
            "completion": "yo",
        }
    )
    assert [m["role"] for m in convo.messages or []] == ["system", "user", "assistant"]
    with pytest.raises(RowError, match="`completion` must be text, got null"):
        adapter({"prompt": "p", "completion": None})


def test_presets_format_known_layouts() -> None:
    gsm = make_adapter(FieldMap(), ["question", "answer"], preset="gsm8k")
    assert gsm({"question": "q", "answer": "a\n#### 3"}).messages == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a\n#### 3"},
    ]
    mmlu = make_adapter(FieldMap(), ["question", "subject", "choices", "answer"], preset="mmlu")
    ex = mmlu(
        {
            "question": "Pick.",
            "subject": "world_history",
            "choices": ["w", "x", "y", "z"],
            "answer": 2,
        }
    )
    assert ex.messages is not None
    assert ex.messages[0]["content"] == format_mmlu_prompt(
        "Pick.", ["w", "x", "y", "z"], "world_history"
    )
    assert ex.messages[0]["content"].endswith("A. w\nB. x\nC. y\nD. z\nAnswer:")
    assert "about world history" in ex.messages[0]["content"]
    assert ex.messages[1] == {"role": "assistant", "content": "C"}
    letters = make_adapter(FieldMap(), ["question", "A", "B", "C", "D", "answer"], preset="mmlu")
    assert (
        letters({"question": "q", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "d"}).messages[
            1
        ]["content"]
        == "D"
    )  # type: ignore[index]
    with pytest.raises(RowError, match="not a choice index"):
        mmlu({"question": "q", "choices": ["a", "b"], "answer": 5})
    alpaca = make_adapter(FieldMap(), ["instruction", "input", "output"], preset="alpaca")
    assert (
        alpaca({"instruction": "Add.", "input": "1 and 2", "output": "3"}).messages[0]["content"]
        == "Add.\n\n1 and 2"
    )  # type: ignore[index]
    with pytest.raises(ValidationError, match="unknown preset 'nope'"):
        make_adapter(FieldMap(), ["x"], preset="nope")
    with pytest.raises(ValidationError, match="defaults to column 'question'"):
        make_adapter(FieldMap(), ["prompt", "completion"], preset="gsm8k")


def test_preference_forms_and_hh() -> None:
    assert parse_hh("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ciao") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
    with pytest.raises(RowError, match="not in HH form"):
        parse_hh("just text")
    pref = make_adapter(FieldMap(), ["prompt", "chosen", "rejected"])
    ex = pref({"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert ex.messages == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "good"},
    ]
    assert ex.rejected == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "bad"},
    ]
    # UltraFeedback-style: full conversations as lists.
    full = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert pref({"prompt": "q", "chosen": full, "rejected": full}).messages == full
    hh = make_adapter(FieldMap(), ["chosen", "rejected"], preset="hh")
    ex = hh(
        {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}
    )
    assert ex.rejected is not None
    assert ex.rejected[-1]["content"] == "bad"


def test_real_dataset_file_layouts(tmp_path: Path) -> None:
    """HumanEval ships as HumanEval.jsonl.gz, HH-RLHF as train.jsonl.gz: read them as they come."""
    import gzip
    import json

    human_eval = tmp_path / "HumanEval.jsonl.gz"
    row = {
        "task_id": "HumanEval/0",
        "prompt": "def f(x):\n",
        "canonical_solution": "    return x\n",
        "test": "def check(candidate):\n    assert candidate(1) == 1\n",
        "entry_point": "f",
    }
    with gzip.open(human_eval, "wt", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    loaded = read_dataset(DatasetSpec(uri=str(human_eval), options={"preset": "humaneval"}))
    assert loaded.rows == [row]
    assert loaded.kind == "completion"
    hh = tmp_path / "train.jsonl.gz"
    with gzip.open(hh, "wt", encoding="utf-8") as f:
        pair = {
            "chosen": "\n\nHuman: hi\n\nAssistant: hello",
            "rejected": "\n\nHuman: hi\n\nAssistant: go away",
        }
        f.write(json.dumps(pair) + "\n")
    assert read_dataset(DatasetSpec(uri=str(hh), options={"preset": "hh"})).kind == "preference"
    # Without the preset the strings are still HH form: the preference kind parses them.
    assert read_dataset(DatasetSpec(uri=str(hh))).kind == "preference"

"""Rows -> Datums: the shift, truncation, dropping, packing, counting, preference pairs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import ConfigError, ValidationError
from crucible_core.ir.training import DatasetSpec
from crucible_datasets import (
    count_tokens,
    get_renderer,
    load_rows,
    pack,
    render_datums,
    render_pairs,
)
from crucible_datasets.datums import TokenStats, iter_datums
from crucible_datasets.render import Rendered

from .conftest import ByteTokenizer, build_tokenizer

SPEC = DatasetSpec(uri="mem.jsonl", template="chatml")


def _chat(user: str, assistant: str) -> dict[str, object]:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    }


def test_datum_shift_is_one_token(tok: ByteTokenizer) -> None:
    rows = [_chat("hi", "hello")]
    (datum,) = render_datums(rows, tok, SPEC)
    rendered = get_renderer("chatml", tok).render(rows[0]["messages"])  # type: ignore[arg-type]
    assert datum.model_input == rendered.tokens[:-1]
    assert datum.loss_fn_inputs.target_tokens == rendered.tokens[1:]
    assert datum.loss_fn_inputs.weights == rendered.weights[1:]
    weighted = [
        t
        for t, w in zip(
            datum.loss_fn_inputs.target_tokens, datum.loss_fn_inputs.weights or [], strict=True
        )
        if w
    ]
    assert tok.decode(weighted) == "hello<|im_end|>"


def test_truncation_and_dropping_are_counted(tok: ByteTokenizer) -> None:
    rows = [
        _chat("a" * 20, "b" * 50),
        _chat("c" * 200, "d"),
        {"messages": [{"role": "user", "content": "no reply"}]},
    ]
    stats = TokenStats()
    datums = render_datums(rows, tok, SPEC, max_length=64, stats=stats)
    assert len(datums) == 1
    assert all(len(d.model_input) <= 64 for d in datums)
    assert stats.rows == 3
    assert stats.truncated == 2
    assert stats.dropped == 2  # the long prompt leaves no assistant token; the last has no reply
    assert stats.tokens == 64
    assert stats.loss_tokens == sum(datums[0].loss_fn_inputs.weights or [])
    counted = count_tokens(rows, tok, SPEC, max_length=64)
    assert (counted.tokens, counted.datums, counted.dropped) == (stats.tokens, 1, 2)


def test_text_rows_train_on_every_token(tok: ByteTokenizer) -> None:
    (datum,) = render_datums([{"text": "abc"}], tok, DatasetSpec(uri="x.jsonl"))
    assert tok.decode(datum.model_input) == "abc"
    assert datum.loss_fn_inputs.weights == [1.0] * 3


def test_bad_row_in_memory_is_named_or_skipped(tok: ByteTokenizer) -> None:
    rows = [_chat("a", "b"), {"messages": "oops"}, _chat("c", "d")]
    with pytest.raises(
        ValidationError, match=r"mem.jsonl \(row 1\): `messages` must be a non-empty list"
    ):
        render_datums(rows, tok, SPEC)
    stats = TokenStats()
    skip = DatasetSpec(uri="mem.jsonl", template="chatml", on_error="skip")
    assert len(render_datums(rows, tok, skip, stats=stats)) == 2
    assert stats.skipped == 1


@settings(max_examples=150, deadline=None)
@given(
    seqs=st.lists(
        st.lists(
            st.tuples(st.integers(0, 300), st.sampled_from([0.0, 1.0])), min_size=1, max_size=40
        ),
        min_size=1,
        max_size=12,
    ),
    max_length=st.integers(1, 50),
)
def test_packing_targets_every_stream_token_once(
    seqs: list[list[tuple[int, float]]], max_length: int
) -> None:
    rendered = [Rendered([t for t, _ in s], [w for _, w in s]) for s in seqs]
    stream = [pair for s in seqs for pair in s]
    datums = list(pack(rendered, max_length))
    # Rebuild the (target, weight) stream the windows cover; windows with no weight are dropped.
    covered: list[tuple[int, float]] = []
    for d in datums:
        assert 1 <= len(d.model_input) <= max_length
        assert any(d.loss_fn_inputs.weights or [])
        covered.extend(
            zip(d.loss_fn_inputs.target_tokens, d.loss_fn_inputs.weights or [], strict=True)
        )
    # Every weighted target of the stream appears exactly once, in order.
    expected_weighted = [p for p in stream[1:] if p[1] == 1.0]
    assert [p for p in covered if p[1] == 1.0] == expected_weighted
    # Windows are contiguous slices of the stream: inputs precede their targets by one.
    tokens = [t for t, _ in stream]
    for d in datums:
        n = len(d.model_input)
        starts = [i for i in range(len(tokens) - n) if tokens[i : i + n] == d.model_input]
        assert any(tokens[i + 1 : i + n + 1] == d.loss_fn_inputs.target_tokens for i in starts)


def test_packing_through_the_spec(tok: ByteTokenizer) -> None:
    rows = [_chat(f"q{i}", f"answer {i}") for i in range(20)]
    spec = DatasetSpec(uri="mem.jsonl", template="chatml", packing=True, max_length=32)
    datums = render_datums(rows, tok, spec)
    assert all(len(d.model_input) == 32 for d in datums[:-1])
    unpacked = render_datums(rows, tok, DatasetSpec(uri="mem.jsonl", template="chatml"))
    total = sum(len(d.model_input) + 1 for d in unpacked)
    assert sum(len(d.model_input) for d in datums) == total - 1
    with pytest.raises(ConfigError, match="packing needs a length"):
        list(iter_datums(rows, tok, DatasetSpec(uri="m.jsonl", packing=True)))


def test_sample_chat_is_short_for_a_byte_tokenizer(tok: ByteTokenizer) -> None:
    """The README's main job trains a tiny model on this file: every conversation < 200 tokens."""
    bare = ByteTokenizer(build_tokenizer(specials=("<|endoftext|>",)))
    rows = load_rows(DatasetSpec(uri="examples/data/chat.jsonl"))
    assert 100 <= len(rows) <= 200
    for template in ("plain", "chatml"):
        spec = DatasetSpec(uri="examples/data/chat.jsonl", template=template)
        lengths = [len(d.model_input) + 1 for d in render_datums(rows, bare, spec)]
        assert len(lengths) == len(rows)
        assert max(lengths) < 200, (template, max(lengths))


def test_preference_pairs(tok: ByteTokenizer, write_jsonl: Callable[..., Path]) -> None:
    spec = DatasetSpec(uri="sample:preference", template="chatml")
    rows = load_rows(spec)
    pairs = render_pairs(rows, tok, spec)
    assert len(pairs) == len(rows)
    chosen, rejected = pairs[0]
    assert chosen.model_input != rejected.model_input
    sft = render_datums(rows, tok, spec)
    assert sft[0] == chosen
    with pytest.raises(ConfigError, match="preference pairs need chosen and rejected"):
        render_pairs([_chat("a", "b")], tok, spec)

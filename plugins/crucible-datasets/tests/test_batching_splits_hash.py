"""Batching (seeded epochs, padding, streaming), splits (ratio, stratified, k-fold), hash."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import ConfigError
from crucible_core.ir.backend import Datum, LossFnInputs
from crucible_core.ir.training import DatasetSpec, FieldMap
from crucible_datasets import (
    DatasetHasher,
    dataset_hash,
    iter_batches,
    iter_stream_batches,
    kfold,
    pad_batch,
    read_dataset,
    sample_rows,
    split_by_ratio,
    stratified_split,
    stream_batches,
    train_validation_split,
)

from .conftest import ByteTokenizer


def _datum(i: int, n: int = 3) -> Datum:
    return Datum(
        model_input=[i] * n,
        loss_fn_inputs=LossFnInputs(target_tokens=[i] * n, weights=[1.0] * n),
    )


# -- batching -------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(0, 40),
    batch_size=st.integers(1, 9),
    epochs=st.integers(1, 3),
    seed=st.integers(0, 2**32),
    drop_last=st.booleans(),
)
def test_every_datum_once_per_epoch(
    n: int, batch_size: int, epochs: int, seed: int, drop_last: bool
) -> None:
    datums = [_datum(i) for i in range(n)]
    batches = list(iter_batches(datums, batch_size, seed=seed, epochs=epochs, drop_last=drop_last))
    per_epoch = n // batch_size if drop_last else -(-n // batch_size)
    assert len(batches) == epochs * per_epoch
    for e in range(epochs):
        epoch = batches[e * per_epoch : (e + 1) * per_epoch]
        assert all(len(b) == batch_size for b in epoch[:-1])
    seen = Counter(d.model_input[0] for b in batches for d in b)
    if drop_last:
        assert all(len(b) == batch_size for b in batches)
        assert all(c <= epochs for c in seen.values())
    else:
        assert seen == Counter({i: epochs for i in range(n)})
    again = list(iter_batches(datums, batch_size, seed=seed, epochs=epochs, drop_last=drop_last))
    assert again == batches


def test_epochs_differ_and_seeds_differ() -> None:
    datums = [_datum(i) for i in range(30)]
    epochs = list(iter_batches(datums, 30, 1, 2))  # seed and epochs may be positional
    assert epochs[0] != epochs[1]
    assert next(iter_batches(datums, 30, seed=2)) != epochs[0]
    assert next(iter_batches(datums, 30, shuffle=False)) == datums
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        next(iter_batches(datums, 0))


def test_padding_adds_zero_weight_targets() -> None:
    batch = [_datum(1, 2), _datum(2, 5)]
    padded = pad_batch(batch, "longest", pad_id=7)
    assert [len(d.model_input) for d in padded] == [5, 5]
    assert padded[0].model_input == [1, 1, 7, 7, 7]
    assert padded[0].loss_fn_inputs.target_tokens == [1, 1, 7, 7, 7]
    assert padded[0].loss_fn_inputs.weights == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert padded[1] == batch[1]
    assert [len(d.model_input) for d in pad_batch(batch, 8)] == [8, 8]
    with pytest.raises(ConfigError, match="more than the pad length 4"):
        pad_batch(batch, 4)
    fixed = next(iter_batches(batch, 2, pad_to=6, shuffle=False))
    assert {len(d.model_input) for d in fixed} == {6}


def test_padding_keeps_every_loss_input() -> None:
    rl = Datum(
        model_input=[1, 2],
        loss_fn_inputs=LossFnInputs(
            target_tokens=[2, 3],
            advantages=[0.5, 0.5],
            logprobs=[-1.0, -2.0],
            ref_logprobs=[-1.5, -2.5],
            sequence_ratio_mask=[0.0, 1.0],
        ),
    )
    (padded,) = pad_batch([rl], 4)
    inputs = padded.loss_fn_inputs
    assert inputs.advantages == [0.5, 0.5, 0.0, 0.0]
    assert inputs.logprobs == [-1.0, -2.0, 0.0, 0.0]
    assert inputs.ref_logprobs == [-1.5, -2.5, 0.0, 0.0]
    # Padding is outside gspo's sequence ratio.
    assert inputs.sequence_ratio_mask == [0.0, 1.0, 0.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 60),
    batch_size=st.integers(1, 7),
    buffer=st.integers(0, 20),
    seed=st.integers(0, 100),
)
def test_stream_batches_are_a_permutation(n: int, batch_size: int, buffer: int, seed: int) -> None:
    datums = [_datum(i) for i in range(n)]
    batches = list(iter_stream_batches(iter(datums), batch_size, seed=seed, shuffle_buffer=buffer))
    flat = [d.model_input[0] for b in batches for d in b]
    assert sorted(flat) == list(range(n))
    assert all(len(b) == batch_size for b in batches[:-1])
    if buffer <= 1:
        assert flat == list(range(n))


def test_stream_batches_from_a_file(tok: ByteTokenizer, write_jsonl: Callable[..., Path]) -> None:
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(25)]
    path = write_jsonl(rows)
    spec = DatasetSpec(uri=str(path), template="chatml")
    batches = list(stream_batches(spec, tok, 4, seed=3, epochs=2, shuffle_buffer=8))
    flat = [tok.decode(d.model_input) for b in batches for d in b]
    assert len(flat) == 50
    assert Counter(flat) == Counter({text: 2 for text in set(flat)})
    ordered = list(
        stream_batches(spec.__class__(uri=str(path), template="chatml", shuffle=False), tok, 25)
    )
    assert "q0" in tok.decode(ordered[0][0].model_input)
    assert "q24" in tok.decode(ordered[0][24].model_input)


# -- splits ---------------------------------------------------------------------------------------

ratios_strategy = st.lists(st.integers(1, 10), min_size=1, max_size=4).map(
    lambda ws: {f"part{i}": w / sum(ws) for i, w in enumerate(ws)}
)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 80), ratios=ratios_strategy, seed=st.integers(0, 1000))
def test_ratio_split_is_a_partition_with_exact_sizes(
    n: int, ratios: dict[str, float], seed: int
) -> None:
    rows = list(range(n))
    parts = split_by_ratio(rows, ratios, seed=seed)
    assert sorted(x for p in parts.values() for x in p) == rows
    for name, part in parts.items():
        assert abs(len(part) - ratios[name] * n) < 1
        assert part == sorted(part)
    assert split_by_ratio(rows, ratios, seed=seed) == parts


@settings(max_examples=100, deadline=None)
@given(
    labels=st.lists(st.sampled_from("abcd"), min_size=1, max_size=80),
    ratios=ratios_strategy,
    seed=st.integers(0, 1000),
)
def test_stratified_split_keeps_class_proportions(
    labels: list[str], ratios: dict[str, float], seed: int
) -> None:
    rows = [{"id": i, "label": lab} for i, lab in enumerate(labels)]
    parts = stratified_split(rows, ratios, "label", seed=seed)
    assert sorted(r["id"] for p in parts.values() for r in p) == list(range(len(rows)))
    totals = Counter(labels)
    for name, part in parts.items():
        counts = Counter(r["label"] for r in part)
        for label, total in totals.items():
            assert abs(counts[label] - ratios[name] * total) < 1


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 60), k=st.integers(2, 6), seed=st.integers(0, 100), stratify=st.booleans())
def test_kfold_puts_each_row_in_one_validation_fold(
    n: int, k: int, seed: int, stratify: bool
) -> None:
    if k > n:
        with pytest.raises(ConfigError, match="at least k rows"):
            kfold(list(range(n)), k)
        return
    rows = [{"id": i, "label": i % 3} for i in range(n)]
    folds = kfold(rows, k, seed=seed, stratify_by="label" if stratify else None)
    assert len(folds) == k
    val_ids = [r["id"] for _, val in folds for r in val]
    assert sorted(val_ids) == list(range(n))
    sizes = [len(val) for _, val in folds]
    assert max(sizes) - min(sizes) <= 1
    for train, val in folds:
        assert {r["id"] for r in train} | {r["id"] for r in val} == set(range(n))
        assert not {r["id"] for r in train} & {r["id"] for r in val}
    if stratify:
        for label in range(3):
            per_fold = [sum(1 for r in val if r["label"] == label) for _, val in folds]
            assert max(per_fold) - min(per_fold) <= 1


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 50), ratio=st.floats(0, 0.95), seed=st.integers(0, 100))
def test_train_validation_split(n: int, ratio: float, seed: int) -> None:
    rows = list(range(n))
    train, val = train_validation_split(rows, ratio, seed=seed)
    assert sorted(train + val) == rows
    if ratio == 0 or n < 2:
        assert val == []
    else:
        assert 1 <= len(val) <= n - 1
        assert abs(len(val) - ratio * n) <= 1


def test_split_errors_and_sampling() -> None:
    with pytest.raises(ConfigError, match="must sum to 1"):
        split_by_ratio([1, 2], {"train": 0.5, "test": 0.2})
    with pytest.raises(ConfigError, match="cannot stratify by 'label'"):
        stratified_split([{"x": 1}], {"all": 1.0}, "label")
    picked = sample_rows(list(range(100)), 10, seed=4)
    assert len(set(picked)) == 10
    assert picked == sorted(picked)
    assert sample_rows(list(range(100)), 10, seed=4) == picked


# -- hash ----------------------------------------------------------------------------------

row_strategy = st.dictionaries(
    st.text(max_size=5),
    st.one_of(st.integers(-1000, 1000), st.text(max_size=10), st.booleans(), st.none()),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(row_strategy, min_size=1, max_size=10), data=st.data())
def test_hash_changes_when_any_row_changes(rows: list[dict[str, Any]], data: st.DataObject) -> None:
    before = dataset_hash(rows)
    i = data.draw(st.integers(0, len(rows) - 1))
    key = data.draw(st.sampled_from(sorted(rows[i])))
    new_value = data.draw(st.text(min_size=1, max_size=10).filter(lambda v: v != rows[i][key]))
    changed = [dict(r) for r in rows]
    changed[i][key] = new_value
    assert dataset_hash(changed) != before
    assert dataset_hash([dict(reversed(list(r.items()))) for r in rows]) == before
    assert dataset_hash([*rows, rows[0]]) != before
    assert dataset_hash(iter(rows)) == before


def test_hash_is_pinned_and_streams(write_jsonl: Callable[..., Path]) -> None:
    rows = [{"b": 1, "a": "x"}, {"messages": [{"role": "user", "content": "é"}]}]
    # The documented format: version line, then each row as sorted compact JSON + newline.
    canonical = b'{"a":"x","b":1}\n' + '{"messages":[{"content":"é","role":"user"}]}\n'.encode()
    expected = hashlib.sha256(b"crucible-dataset-hash-v1\n" + canonical).hexdigest()
    assert dataset_hash(rows) == f"sha256:{expected}"
    # Pinned: may only change with HASH_VERSION (run manifests compare it across runs).
    assert expected == "69ccd0ed9adba90f8b10cb3f5b578da1319d12915f66cf3569cb90ad47f80cc0"
    hasher = DatasetHasher()
    for r in rows:
        hasher.update(r)
    assert hasher.hexdigest() == dataset_hash(rows)
    assert hasher.rows == 2
    file_rows = [{"b": 1, "a": "x"}, {"a": "é", "b": 2}]
    path = write_jsonl(file_rows)
    spec = DatasetSpec(uri=str(path), fields=FieldMap(text="a"))
    assert read_dataset(spec).hash() == dataset_hash(
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
    )
    assert read_dataset(spec).hash() == dataset_hash(file_rows)

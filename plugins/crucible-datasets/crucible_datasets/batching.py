"""Batches of Datums: seeded shuffling, epochs, padding, and streaming with a shuffle buffer.

:func:`iter_batches` works on a sequence held in memory: each epoch is a
fresh permutation drawn from ``random.Random(seed)`` advanced once per
epoch, so epoch ``e`` is the same on every run with the same seed.

:func:`iter_stream_batches` works on any iterable (a file being read): it
shuffles within a bounded buffer (``shuffle_buffer`` items), so memory stays
constant whatever the dataset's size. :func:`stream_batches` goes from a
DatasetSpec to batches in one pass per epoch, re-reading the file each epoch.

Padding (``pad_to``) makes every Datum of a batch the same length: inputs and
targets are filled with ``pad_id`` and the padded targets weigh 0, so they
add nothing to the loss.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from crucible_core.contracts import Tokenizer
from crucible_core.errors import ConfigError
from crucible_core.ir import DatasetSpec, Datum, LossFnInputs

__all__ = [
    "PadTo",
    "iter_batches",
    "iter_stream_batches",
    "pad_batch",
    "pad_datum",
    "stream_batches",
]

PadTo = int | Literal["longest"] | None


def _check(batch_size: int, epochs: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {epochs}")


def pad_datum(datum: Datum, length: int, pad_id: int = 0) -> Datum:
    """``datum`` filled to ``length`` tokens; padded targets weigh 0."""
    n = len(datum.model_input)
    if n > length:
        raise ConfigError(
            f"a datum has {n} tokens, more than the pad length {length}",
            hint="truncate first (dataset_spec.max_length) or pad to a larger length",
        )
    if n == length:
        return datum
    fill = length - n
    inputs = datum.loss_fn_inputs
    weights = inputs.weights if inputs.weights is not None else [1.0] * n
    return Datum(
        model_input=[*datum.model_input, *([pad_id] * fill)],
        loss_fn_inputs=LossFnInputs(
            target_tokens=[*inputs.target_tokens, *([pad_id] * fill)],
            weights=[*weights, *([0.0] * fill)],
            advantages=None if inputs.advantages is None else [*inputs.advantages, *([0.0] * fill)],
            logprobs=None if inputs.logprobs is None else [*inputs.logprobs, *([0.0] * fill)],
            ref_logprobs=None
            if inputs.ref_logprobs is None
            else [*inputs.ref_logprobs, *([0.0] * fill)],
            sequence_ratio_mask=None
            if inputs.sequence_ratio_mask is None
            else [*inputs.sequence_ratio_mask, *([0.0] * fill)],
        ),
    )


def pad_batch(batch: Sequence[Datum], pad_to: PadTo, pad_id: int = 0) -> list[Datum]:
    """Pad every datum to ``pad_to`` tokens (``"longest"``: the batch's longest; None: as is)."""
    if pad_to is None or not batch:
        return list(batch)
    length = max(len(d.model_input) for d in batch) if pad_to == "longest" else pad_to
    return [pad_datum(d, length, pad_id) for d in batch]


def iter_batches(
    datums: Sequence[Datum],
    batch_size: int,
    seed: int = 0,
    epochs: int = 1,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    pad_to: PadTo = None,
    pad_id: int = 0,
) -> Iterator[list[Datum]]:
    """Batches over ``epochs`` passes; each epoch a seeded permutation (if ``shuffle``).

    Every datum appears exactly once per epoch (``drop_last`` drops a short final
    batch instead).
    """
    _check(batch_size, epochs)
    rng = random.Random(seed)
    n = len(datums)
    for _ in range(epochs):
        order = list(range(n))
        if shuffle:
            rng.shuffle(order)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            yield pad_batch([datums[i] for i in idx], pad_to, pad_id)


def iter_stream_batches(
    datums: Iterable[Datum],
    batch_size: int,
    *,
    seed: int = 0,
    shuffle_buffer: int = 0,
    drop_last: bool = False,
    pad_to: PadTo = None,
    pad_id: int = 0,
) -> Iterator[list[Datum]]:
    """Batches from a stream in one pass, shuffled within a buffer of ``shuffle_buffer`` items.

    With ``shuffle_buffer = 0`` the stream's order is kept. Memory holds at most
    ``shuffle_buffer + batch_size`` datums.
    """
    _check(batch_size, 1)
    if shuffle_buffer < 0:
        raise ConfigError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
    rng = random.Random(seed)
    buffer: list[Datum] = []
    batch: list[Datum] = []

    def emit(item: Datum) -> Iterator[list[Datum]]:
        batch.append(item)
        if len(batch) == batch_size:
            out = pad_batch(batch, pad_to, pad_id)
            batch.clear()
            yield out

    for datum in datums:
        if shuffle_buffer <= 1:
            yield from emit(datum)
            continue
        if len(buffer) < shuffle_buffer:
            buffer.append(datum)
            continue
        j = rng.randrange(shuffle_buffer)
        buffer[j], datum = datum, buffer[j]
        yield from emit(datum)
    rng.shuffle(buffer)
    for datum in buffer:
        yield from emit(datum)
    if batch and not drop_last:
        yield pad_batch(batch, pad_to, pad_id)


def stream_batches(
    spec: DatasetSpec,
    tokenizer: Tokenizer,
    batch_size: int,
    *,
    seed: int = 0,
    epochs: int = 1,
    shuffle_buffer: int = 10_000,
    max_length: int | None = None,
    drop_last: bool = False,
    pad_to: PadTo = None,
    pad_id: int = 0,
) -> Iterator[list[Datum]]:
    """Read, render, tokenize and batch ``spec`` as a stream, ``epochs`` times.

    Memory is bounded by the shuffle buffer, not by the file: use this for
    datasets larger than memory (``spec.shuffle = false`` keeps file order).
    """
    from crucible_datasets.datums import iter_datums
    from crucible_datasets.loading import stream_rows
    from crucible_datasets.render import get_renderer

    _check(batch_size, epochs)
    renderer = get_renderer(spec.template, tokenizer)
    for epoch in range(epochs):
        datums = iter_datums(
            stream_rows(spec), tokenizer, spec, max_length=max_length, renderer=renderer
        )
        yield from iter_stream_batches(
            datums,
            batch_size,
            seed=seed * 1_000_003 + epoch,
            shuffle_buffer=shuffle_buffer if spec.shuffle else 0,
            drop_last=drop_last,
            pad_to=pad_to,
            pad_id=pad_id,
        )

"""Rows -> rendered token sequences -> backend Datums (truncated or packed).

The shift: a rendered example is ``tokens`` with one loss weight per token.
Its Datum predicts each token from the ones before it::

    model_input                  = tokens[:-1]
    loss_fn_inputs.target_tokens = tokens[1:]
    loss_fn_inputs.weights       = weights[1:]

so the weight of a target is the weight of the token being predicted. A
length limit ``max_length`` bounds ``model_input``: a longer example keeps
its first ``max_length + 1`` tokens. Examples left with fewer than two
tokens or with no weighted target are dropped and counted.

Packing concatenates the rendered examples into one stream and cuts it into
windows of ``max_length`` inputs (each window's targets run one token
further), so every token of the stream but the first is a target exactly
once. Windows carry no segment ids (the Datum IR has none), so attention
crosses example boundaries inside a window, as in most packed SFT.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from crucible_core.contracts import Tokenizer
from crucible_core.errors import ConfigError, ValidationError
from crucible_core.ir import DatasetSpec, Datum, LossFnInputs
from crucible_datasets._gc import gc_paused
from crucible_datasets.fields import Example, RowAdapter, RowError
from crucible_datasets.loading import adapter_for
from crucible_datasets.render import Piece, Rendered, Renderer, TrainOn, get_renderer
from crucible_datasets.sources import ErrorLog

__all__ = [
    "TokenStats",
    "count_tokens",
    "example_pieces",
    "iter_datums",
    "iter_rendered",
    "pack",
    "render_datums",
    "render_example",
    "render_pairs",
    "to_datum",
]


@dataclass
class TokenStats:
    """Counts gathered while rendering.

    ``tokens`` sums the Datums' ``model_input`` lengths; ``loss_tokens`` sums their
    weights; ``truncated`` counts examples cut to ``max_length``; ``dropped`` counts
    examples with nothing to learn (too short, or no weighted target left);
    ``skipped`` counts bad rows skipped under ``on_error = "skip"``.
    """

    rows: int = 0
    datums: int = 0
    tokens: int = 0
    loss_tokens: float = 0.0
    truncated: int = 0
    dropped: int = 0
    skipped: int = 0

    def add(self, datum: Datum) -> None:
        self.datums += 1
        self.tokens += len(datum.model_input)
        weights = datum.loss_fn_inputs.weights
        self.loss_tokens += sum(weights) if weights is not None else len(datum.model_input)


def to_datum(tokens: list[int], weights: list[float]) -> Datum:
    """The Datum for one rendered sequence (see the module docstring for the shift)."""
    return Datum(
        model_input=tokens[:-1],
        loss_fn_inputs=LossFnInputs(target_tokens=tokens[1:], weights=weights[1:]),
    )


def example_pieces(example: Example, renderer: Renderer) -> list[Piece]:
    """The renderer's pieces for one Example (text rows: the text and EOS, all trained)."""
    if example.text is not None:
        return renderer.text_pieces(example.text)
    assert example.messages is not None
    return renderer.pieces(example.messages, add_generation_prompt=False)


def render_example(example: Example, renderer: Renderer, train_on: str = "assistant") -> Rendered:
    """Tokens and weights of one Example (text rows train on every token)."""
    return renderer.assemble(
        [example_pieces(example, renderer)], train_on="all" if train_on == "all" else "assistant"
    )[0]


def _resolve_length(spec: DatasetSpec, max_length: int | None) -> int | None:
    length = max_length if max_length is not None else spec.max_length
    if length is not None and length < 1:
        raise ConfigError(f"max_length must be at least 1, got {length}")
    return length


def iter_rendered(
    rows: Iterable[Mapping[str, Any]],
    renderer: Renderer,
    spec: DatasetSpec,
    *,
    max_length: int | None = None,
    stats: TokenStats | None = None,
    adapter: RowAdapter | None = None,
    truncate: bool = True,
) -> Iterator[Rendered]:
    """Render each row (truncated to ``max_length + 1`` tokens unless ``truncate=False``).

    Rows are rendered in chunks of ``renderer.batch_size`` so a batch encoder can
    tokenize many at once; memory stays bounded by the chunk.
    """
    stats = stats if stats is not None else TokenStats()
    errors = ErrorLog(spec.on_error)
    limit = _resolve_length(spec, max_length)
    train_on: TrainOn = "all" if spec.train_on == "all" else "assistant"
    chunk: list[list[Piece]] = []
    size = max(1, renderer.batch_size)

    def flush() -> Iterator[Rendered]:
        for rendered in renderer.assemble(chunk, train_on=train_on):
            if truncate and limit is not None and len(rendered.tokens) > limit + 1:
                stats.truncated += 1
                rendered = Rendered(rendered.tokens[: limit + 1], rendered.weights[: limit + 1])
            yield rendered
        chunk.clear()

    for index, row in enumerate(rows):
        stats.rows += 1
        if adapter is None:
            adapter = adapter_for(spec, list(row), where=f"{spec.uri} (row {index})")
        try:
            example = adapter(row)
        except RowError as exc:
            errors.reject(
                ValidationError(
                    f"{spec.uri} (row {index}): {exc}",
                    path=f"$.{exc.field}",
                    hint='fix the row, or set on_error = "skip"',
                )
            )
            stats.skipped = errors.skipped
            continue
        chunk.append(example_pieces(example, renderer))
        if len(chunk) >= size:
            yield from flush()
    if chunk:
        yield from flush()


def pack(
    rendered: Iterable[Rendered], max_length: int, *, stats: TokenStats | None = None
) -> Iterator[Datum]:
    """Concatenate sequences and cut windows of ``max_length`` inputs (module docstring)."""
    if max_length < 1:
        raise ConfigError(f"packing needs max_length >= 1, got {max_length}")
    tokens: list[int] = []
    weights: list[float] = []
    width = max_length + 1
    for r in rendered:
        tokens.extend(r.tokens)
        weights.extend(r.weights)
        while len(tokens) >= width:
            if any(weights[1:width]):
                datum = to_datum(tokens[:width], weights[:width])
                if stats is not None:
                    stats.add(datum)
                yield datum
            elif stats is not None:
                stats.dropped += 1
            del tokens[:max_length]
            del weights[:max_length]
    if len(tokens) >= 2 and any(weights[1:]):
        datum = to_datum(tokens, weights)
        if stats is not None:
            stats.add(datum)
        yield datum


def iter_datums(
    rows: Iterable[Mapping[str, Any]],
    tokenizer: Tokenizer,
    spec: DatasetSpec,
    *,
    max_length: int | None = None,
    renderer: Renderer | None = None,
    stats: TokenStats | None = None,
) -> Iterator[Datum]:
    """Datums for ``rows``, lazily (rows may be a stream larger than memory).

    ``renderer`` defaults to ``get_renderer(spec.template, tokenizer)``;
    ``max_length`` to ``spec.max_length``. ``spec.packing`` packs (needs a length).
    """
    stats = stats if stats is not None else TokenStats()
    renderer = renderer if renderer is not None else get_renderer(spec.template, tokenizer)
    limit = _resolve_length(spec, max_length)
    if spec.packing:
        if limit is None:
            raise ConfigError(
                "dataset_spec.packing needs a length: set dataset_spec.max_length "
                "(or the model's max_seq_len)",
                hint="e.g. max_length = 512",
            )
        yield from pack(
            iter_rendered(rows, renderer, spec, max_length=limit, stats=stats, truncate=False),
            limit,
            stats=stats,
        )
        return
    for r in iter_rendered(rows, renderer, spec, max_length=limit, stats=stats):
        if len(r.tokens) < 2 or not any(r.weights[1:]):
            stats.dropped += 1
            continue
        datum = to_datum(r.tokens, r.weights)
        stats.add(datum)
        yield datum


def render_datums(
    rows: Iterable[Mapping[str, Any]],
    tokenizer: Tokenizer,
    spec: DatasetSpec,
    *,
    max_length: int | None = None,
    renderer: Renderer | None = None,
    stats: TokenStats | None = None,
) -> list[Datum]:
    """All Datums for ``rows`` (see :func:`iter_datums`)."""
    with gc_paused():
        return list(
            iter_datums(
                rows, tokenizer, spec, max_length=max_length, renderer=renderer, stats=stats
            )
        )


def count_tokens(
    rows: Iterable[Mapping[str, Any]],
    tokenizer: Tokenizer,
    spec: DatasetSpec,
    *,
    max_length: int | None = None,
    renderer: Renderer | None = None,
) -> TokenStats:
    """What :func:`render_datums` would produce, counted (for ``crucible plan``)."""
    stats = TokenStats()
    for _ in iter_datums(
        rows, tokenizer, spec, max_length=max_length, renderer=renderer, stats=stats
    ):
        pass
    return stats


def render_pairs(
    rows: Iterable[Mapping[str, Any]],
    tokenizer: Tokenizer,
    spec: DatasetSpec,
    *,
    max_length: int | None = None,
    renderer: Renderer | None = None,
) -> list[tuple[Datum, Datum]]:
    """(chosen, rejected) Datums for preference rows, for DPO-style losses.

    Both sides are rendered with the same template; a pair is dropped if either
    side has no weighted target after truncation.
    """
    renderer = renderer if renderer is not None else get_renderer(spec.template, tokenizer)
    limit = _resolve_length(spec, max_length)
    adapter: RowAdapter | None = None
    errors = ErrorLog(spec.on_error)
    out: list[tuple[Datum, Datum]] = []
    for index, row in enumerate(rows):
        if adapter is None:
            adapter = adapter_for(spec, list(row), where=f"{spec.uri} (row {index})")
            if adapter.kind != "preference":
                raise ConfigError(
                    f"{spec.uri}: preference pairs need chosen and rejected columns; "
                    f"this dataset is {adapter.kind!r}",
                    hint="map fields.chosen and fields.rejected",
                )
        try:
            example = adapter(row)
        except RowError as exc:
            errors.reject(
                ValidationError(f"{spec.uri} (row {index}): {exc}", path=f"$.{exc.field}")
            )
            continue
        assert example.messages is not None
        assert example.rejected is not None
        sides: list[Datum] = []
        for messages in (example.messages, example.rejected):
            r = renderer.render(messages, train_on=spec.train_on)
            if limit is not None and len(r.tokens) > limit + 1:
                r = Rendered(r.tokens[: limit + 1], r.weights[: limit + 1])
            if len(r.tokens) < 2 or not any(r.weights[1:]):
                break
            sides.append(to_datum(r.tokens, r.weights))
        if len(sides) == 2:
            out.append((sides[0], sides[1]))
    return out

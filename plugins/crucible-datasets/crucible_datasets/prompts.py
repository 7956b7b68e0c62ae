"""Held-out rows as generation prompts: what a sampled metric asks the model, and the answer.

A sampled metric (``exact_match`` ... in ``validation_spec.metrics``) needs,
for each validation row, the prompt the model should complete and the text it
should write. For a chat or prompt/completion row that is the conversation up
to its last assistant message, rendered with the same template as training
and ending in the assistant's header, and that message's content. Rows whose
last message is not the assistant's (text rows, a trailing user turn) have no
reference answer and are left out.

Each prompt is ``{"tokens": [...], "reference": str, "input": str, "index": int}``;
``input`` is the last user message, for showing a sample to a person;
``index`` is the row's position in ``rows`` (a metric that needs the whole row,
such as pass@k's tests, finds it there).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from crucible_core.ir import DatasetSpec
from crucible_datasets.fields import Message, RowAdapter, RowError
from crucible_datasets.loading import adapter_for
from crucible_datasets.render import Renderer

__all__ = ["conversations", "distill_prompts", "eval_prompts", "last_user"]


def conversations(
    rows: Iterable[Mapping[str, Any]], spec: DatasetSpec, adapter: RowAdapter | None = None
) -> Iterator[tuple[int, Mapping[str, Any], list[Message]]]:
    """``(index, row, messages)`` for each row of ``rows`` the adapter accepts.

    The adapter is ``adapter`` or, from the first row's columns, the one ``spec``
    names; rows it refuses are skipped, and so are rows without messages (text rows).
    """
    for index, row in enumerate(rows):
        if adapter is None:
            adapter = adapter_for(spec, list(row))
        try:
            example = adapter(row)
        except RowError:
            continue
        if example.messages:
            yield index, row, list(example.messages)


def last_user(messages: Iterable[Message]) -> str:
    """The content of the last user message (``""`` if none): what a person is shown."""
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


def eval_prompts(
    rows: Iterable[Mapping[str, Any]],
    renderer: Renderer,
    spec: DatasetSpec,
    *,
    limit: int | None = None,
    max_length: int | None = None,
    adapter: RowAdapter | None = None,
) -> list[dict[str, Any]]:
    """Prompts and reference answers of ``rows`` (at most ``limit``; see the module docstring).

    A prompt longer than ``max_length`` tokens is left out (it could not be
    completed within the model's context), as are rows the adapter refuses.
    """
    out: list[dict[str, Any]] = []
    if limit is not None and limit <= 0:
        return out
    for index, _, messages in conversations(rows, spec, adapter):
        if messages[-1].get("role") != "assistant":
            continue
        tokens = renderer.render_prompt(messages[:-1])
        if max_length is not None and len(tokens) >= max_length:
            continue
        out.append(
            {
                "tokens": tokens,
                "reference": messages[-1].get("content", ""),
                "input": last_user(messages[:-1]),
                "index": index,
            }
        )
        if limit is not None and len(out) >= limit:
            break
    return out


def distill_prompts(
    rows: Iterable[Mapping[str, Any]],
    renderer: Renderer,
    spec: DatasetSpec,
    *,
    max_length: int | None = None,
    adapter: RowAdapter | None = None,
) -> list[dict[str, Any]]:
    """The prompts of ``rows`` a distillation teacher completes, in row order.

    A row's prompt is its conversation without a trailing assistant message (the
    dataset's own answer is kept as ``reference``, ``""`` when there is none),
    rendered with the training template and ending in the assistant's header.
    Each is ``{"tokens": [...], "messages": [...], "reference": str, "input": str}``;
    ``messages`` are the prompt's messages, for a teacher that is sent text.
    Text rows, rows the adapter refuses and prompts of ``max_length`` tokens or more
    (no room left to complete) are left out.
    """
    out: list[dict[str, Any]] = []
    for _, _, messages in conversations(rows, spec, adapter):
        reference = ""
        if messages and messages[-1].get("role") == "assistant":
            reference = messages[-1].get("content", "")
            messages = messages[:-1]
        if not messages:
            continue
        tokens = renderer.render_prompt(messages)
        if max_length is not None and len(tokens) >= max_length:
            continue
        out.append(
            {
                "tokens": tokens,
                "messages": [dict(m) for m in messages],
                "reference": reference,
                "input": last_user(messages),
            }
        )
    return out

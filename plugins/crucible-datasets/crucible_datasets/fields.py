"""Field mapping: which columns play which role, and how a row becomes a conversation.

A :class:`~crucible_core.ir.training.FieldMap` names the columns holding
``messages``, ``prompt``/``completion``, ``text``, ``label`` and
``chosen``/``rejected``. From the first row's columns, :func:`make_adapter`
decides the dataset's *kind*:

========== ==================================== ===============================
kind       columns                              becomes
========== ==================================== ===============================
chat       ``messages``                         the conversation as given
preference ``chosen`` + ``rejected``            the chosen conversation (and
                                                the rejected one beside it)
completion ``prompt`` + ``completion`` (or      user: prompt, assistant:
           ``label``)                           completion
text       ``text``                             raw text, every token trained
========== ==================================== ===============================

A field set to something other than its default is *explicitly mapped*: its
column must exist, or the error lists the available columns. Presets format
well-known dataset layouts: ``gsm8k``, ``mmlu``, ``humaneval``, ``alpaca`` and
``hh`` (Anthropic HH-RLHF's ``\\n\\nHuman:``/``\\n\\nAssistant:`` strings).

Messages may use OpenAI form (``role``/``content``, content as a string or a
list of ``{"type": "text", "text": ...}`` parts) or ShareGPT form
(``from``/``value`` with ``human``/``gpt``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from crucible_core.errors import ValidationError
from crucible_core.ir import FieldMap

__all__ = [
    "PRESETS",
    "ROLES",
    "Example",
    "Kind",
    "Message",
    "RowAdapter",
    "RowError",
    "format_mmlu_prompt",
    "make_adapter",
    "parse_hh",
]

Kind = Literal["chat", "completion", "text", "preference"]
Message = dict[str, str]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
_ROLE_SET = frozenset(ROLES)
_ROLE_ALIASES = {
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "function": "tool",
}
_FIELD_NAMES: tuple[str, ...] = (
    "messages",
    "prompt",
    "completion",
    "text",
    "label",
    "chosen",
    "rejected",
)
_DEFAULTS = FieldMap()
LETTERS = "ABCDEFGHIJ"


class RowError(ValueError):
    """A row does not have the shape its dataset's kind needs; ``field`` is the bad column."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Example:
    """A row made ready to render.

    ``messages`` for chat, completion and preference rows (the chosen side);
    ``text`` for text rows; ``rejected`` for preference rows.
    """

    kind: Kind
    messages: list[Message] | None = None
    text: str | None = None
    rejected: list[Message] | None = None


# -- value conversion -------------------------------------------------------------


def _as_text(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise RowError(f"`{field}` must be text, got {_kind(value)}", field)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        parts: list[str] = []
        for part in cast(list[Any], value):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and cast(Mapping[str, Any], part).get("type") == "text":
                parts.append(str(cast(Mapping[str, Any], part).get("text", "")))
            else:
                raise RowError(
                    f"`{field}` holds a non-text content part ({_kind(part)}); "
                    "only text parts can be trained on",
                    field,
                )
        return "".join(parts)
    raise RowError(f"`{field}` must be text, got {_kind(value)}", field)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _messages(value: Any, field: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise RowError(
            f"`{field}` must be a non-empty list of messages, got "
            + ("an empty list" if isinstance(value, list) else _kind(value)),
            field,
        )
    out: list[Message] = []
    for i, item in enumerate(cast(list[Any], value)):
        if not isinstance(item, Mapping):
            raise RowError(
                f"`{field}[{i}]` must be an object with role and content, got {_kind(item)}",
                f"{field}[{i}]",
            )
        m = cast(Mapping[str, Any], item)
        role = m.get("role")
        if role is None:
            role = m.get("from")
        if not (isinstance(role, str) and role in _ROLE_SET):
            role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
            if not (isinstance(role, str) and role in _ROLE_SET):
                raise RowError(
                    f"`{field}[{i}].role` must be one of {', '.join(ROLES)}, got {role!r}",
                    f"{field}[{i}].role",
                )
        content = m.get("content")
        if content is None:
            content = m.get("value")
        if type(content) is not str:
            if content is None and role == "assistant":
                content = ""
            else:
                content = _as_text(content, f"{field}[{i}].content")
        out.append({"role": cast(str, role), "content": content})
    return out


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh(text: str, field: str = "text") -> list[Message]:
    """Anthropic HH-RLHF form (``\\n\\nHuman: ...\\n\\nAssistant: ...``) -> messages."""
    body = text if text.startswith("\n\n") else "\n\n" + text.lstrip("\n")
    parts = _HH_TURN.split(body)
    if len(parts) < 3 or parts[0].strip():
        raise RowError(
            f"`{field}` is not in HH form ('\\n\\nHuman: ...\\n\\nAssistant: ...')", field
        )
    out: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        out.append({"role": "user" if speaker == "Human" else "assistant", "content": content})
    return out


def format_mmlu_prompt(question: str, choices: list[str], subject: str | None = None) -> str:
    """The usual MMLU prompt: optional subject line, question, lettered choices, ``Answer:``."""
    head = ""
    if subject:
        head = f"The following is a multiple choice question about {subject.replace('_', ' ')}.\n\n"
    lines = [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return head + question.strip() + "\n" + "\n".join(lines) + "\nAnswer:"


def _mmlu_answer(value: Any, n_choices: int, field: str) -> str:
    if isinstance(value, bool):
        raise RowError(f"`{field}` must be a choice index or letter, got bool", field)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int):
        if 0 <= value < n_choices:
            return LETTERS[value]
        raise RowError(f"`{field}` = {value} is not a choice index (0..{n_choices - 1})", field)
    if isinstance(value, str) and value.strip().upper() in LETTERS[:n_choices]:
        return value.strip().upper()
    raise RowError(
        f"`{field}` must be a choice index or letter (A..{LETTERS[n_choices - 1]}), got {value!r}",
        field,
    )


# -- adapters ------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A known dataset layout: its default columns and how a row becomes an Example."""

    name: str
    kind: Kind
    columns: Mapping[str, str]
    required: tuple[str, ...]
    convert: Callable[[Mapping[str, Any], Mapping[str, str]], Example]
    summary: str


def _completion_example(prompt: Any, completion: Any, pf: str, cf: str) -> Example:
    if isinstance(prompt, list):
        messages = _messages(prompt, pf)
    else:
        messages = [{"role": "user", "content": _as_text(prompt, pf)}]
    if isinstance(completion, list):
        messages = messages + _messages(completion, cf)
    else:
        messages.append({"role": "assistant", "content": _as_text(completion, cf)})
    return Example("completion", messages)


def _get(row: Mapping[str, Any], column: str) -> Any:
    try:
        return row[column]
    except KeyError:
        raise RowError(
            f"missing column {column!r} (this row has: {', '.join(map(str, row)) or 'none'})",
            column,
        ) from None


def _gsm8k(row: Mapping[str, Any], cols: Mapping[str, str]) -> Example:
    p, c = cols["prompt"], cols["completion"]
    return _completion_example(_get(row, p), _get(row, c), p, c)


def _mmlu(row: Mapping[str, Any], cols: Mapping[str, str]) -> Example:
    q = cols["prompt"]
    question = _as_text(_get(row, q), q)
    if "choices" in row:
        raw = row["choices"]
        if not isinstance(raw, list) or not 2 <= len(cast(list[Any], raw)) <= len(LETTERS):
            raise RowError("`choices` must be a list of 2 to 10 options", "choices")
        choices = [_as_text(c, "choices") for c in cast(list[Any], raw)]
    elif all(k in row for k in "ABCD"):
        choices = [_as_text(row[k], k) for k in "ABCD"]
    elif all(f"column_{i}" in row for i in range(6)) and q == "column_0":
        choices = [_as_text(row[f"column_{i}"], f"column_{i}") for i in range(1, 5)]
    else:
        raise RowError(
            "no choices: expected a `choices` list, columns A, B, C, D, or the six "
            "headerless MMLU CSV columns",
            "choices",
        )
    label = cols["label"]
    answer = _mmlu_answer(_get(row, label), len(choices), label)
    subject = row.get("subject")
    prompt = format_mmlu_prompt(question, choices, subject if isinstance(subject, str) else None)
    return Example(
        "completion",
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
    )


def _alpaca(row: Mapping[str, Any], cols: Mapping[str, str]) -> Example:
    p, c = cols["prompt"], cols["completion"]
    instruction = _as_text(_get(row, p), p)
    extra = row.get("input")
    if isinstance(extra, str) and extra.strip():
        instruction = f"{instruction}\n\n{extra}"
    return _completion_example(instruction, _get(row, c), p, c)


def _hh(row: Mapping[str, Any], cols: Mapping[str, str]) -> Example:
    ch, rj = cols["chosen"], cols["rejected"]
    return Example(
        "preference",
        parse_hh(_as_text(_get(row, ch), ch), ch),
        rejected=parse_hh(_as_text(_get(row, rj), rj), rj),
    )


PRESETS: dict[str, Preset] = {
    "gsm8k": Preset(
        "gsm8k",
        "completion",
        {"prompt": "question", "completion": "answer"},
        ("prompt", "completion"),
        _gsm8k,
        "GSM8K: question -> answer (worked solution ending '#### N')",
    ),
    "mmlu": Preset(
        "mmlu",
        "completion",
        {"prompt": "question", "label": "answer"},
        ("prompt", "label"),
        _mmlu,
        "MMLU: question + choices -> the answer letter",
    ),
    "humaneval": Preset(
        "humaneval",
        "completion",
        {"prompt": "prompt", "completion": "canonical_solution"},
        ("prompt", "completion"),
        _gsm8k,
        "HumanEval: prompt (signature + docstring) -> canonical_solution",
    ),
    "alpaca": Preset(
        "alpaca",
        "completion",
        {"prompt": "instruction", "completion": "output"},
        ("prompt", "completion"),
        _alpaca,
        "Alpaca: instruction (+ input) -> output",
    ),
    "hh": Preset(
        "hh",
        "preference",
        {"chosen": "chosen", "rejected": "rejected"},
        ("chosen", "rejected"),
        _hh,
        "Anthropic HH-RLHF: chosen/rejected dialogue strings",
    ),
}


class RowAdapter:
    """Turns rows of one dataset into :class:`Example`; built by :func:`make_adapter`."""

    def __init__(
        self, kind: Kind, columns: Mapping[str, str], preset: Preset | None = None
    ) -> None:
        self.kind: Kind = kind
        self.columns: dict[str, str] = dict(columns)
        self.preset = preset
        self._convert: Callable[[Mapping[str, Any]], Example] = self._pick()

    def __call__(self, row: Mapping[str, Any]) -> Example:
        """The row as an Example; raises :class:`RowError` naming the bad column."""
        return self._convert(row)

    def used_columns(self) -> list[str]:
        """The columns this adapter reads (for listings and error messages)."""
        if self.kind == "chat":
            return [self.columns["messages"]]
        if self.kind == "text":
            return [self.columns["text"]]
        if self.kind == "preference":
            cols = [self.columns["chosen"], self.columns["rejected"]]
            return [self.columns["prompt"], *cols] if "prompt" in self.columns else cols
        return [self.columns[r] for r in ("prompt", "completion", "label") if r in self.columns]

    def _pick(self) -> Callable[[Mapping[str, Any]], Example]:
        cols = self.columns
        if self.preset is not None:
            convert = self.preset.convert
            return lambda row: convert(row, cols)
        if self.kind == "chat":
            m = cols["messages"]
            return lambda row: Example("chat", _messages(_get(row, m), m))
        if self.kind == "text":
            t = cols["text"]
            return lambda row: Example("text", text=_as_text(_get(row, t), t))
        if self.kind == "completion":
            p = cols["prompt"]
            c = cols.get("completion") or cols["label"]
            return lambda row: _completion_example(_get(row, p), _get(row, c), p, c)
        return self._preference

    def _preference(self, row: Mapping[str, Any]) -> Example:
        ch, rj = self.columns["chosen"], self.columns["rejected"]
        prompt_col = self.columns.get("prompt")
        prompt: list[Message] | None = None
        if prompt_col is not None and row.get(prompt_col) is not None:
            raw = row[prompt_col]
            prompt = (
                _messages(raw, prompt_col)
                if isinstance(raw, list)
                else [{"role": "user", "content": _as_text(raw, prompt_col)}]
            )
        return Example(
            "preference",
            _side(row, ch, prompt),
            rejected=_side(row, rj, prompt),
        )


def _side(row: Mapping[str, Any], column: str, prompt: list[Message] | None) -> list[Message]:
    value = _get(row, column)
    if isinstance(value, list):
        messages = _messages(value, column)
        if prompt is not None and messages[0]["role"] == "assistant":
            return prompt + messages
        return messages
    text = _as_text(value, column)
    if prompt is not None:
        return [*prompt, {"role": "assistant", "content": text}]
    return parse_hh(text, column)


def make_adapter(
    fields: FieldMap,
    columns: Collection[str],
    *,
    preset: str | None = None,
    where: str = "the dataset",
) -> RowAdapter:
    """Decide the kind of a dataset from its columns and the field map; check mapped columns.

    Raises :class:`~crucible_core.errors.ValidationError` (path ``$.fields.<role>``)
    when an explicitly mapped column is missing, listing the available columns, or
    when no kind fits.
    """
    available = ", ".join(map(str, columns)) or "none"
    mapping = {role: cast(str, getattr(fields, role)) for role in _FIELD_NAMES}
    explicit = {role for role in _FIELD_NAMES if mapping[role] != getattr(_DEFAULTS, role)}
    if preset is not None:
        try:
            chosen = PRESETS[preset]
        except KeyError:
            raise ValidationError(
                f"options.preset: unknown preset {preset!r}",
                path="$.options.preset",
                hint=f"presets: {', '.join(PRESETS)}",
            ) from None
        cols = dict(mapping)
        cols.update(chosen.columns)
        if preset == "mmlu" and "question" not in columns and "column_5" in columns:
            # MMLU's own CSV files have no header: question, A, B, C, D, answer.
            cols.update({"prompt": "column_0", "label": "column_5"})
        cols.update({r: mapping[r] for r in explicit})
        for role in chosen.required:
            _require_column(role, cols[role], columns, where, available, role in explicit)
        for role in explicit:
            _require_column(role, cols[role], columns, where, available, True)
        return RowAdapter(chosen.kind, cols, chosen)
    for role in explicit:
        _require_column(role, mapping[role], columns, where, available, True)

    def has(role: str) -> bool:
        return mapping[role] in columns

    candidates: list[tuple[Kind, tuple[str, ...]]] = [
        ("chat", ("messages",)),
        ("preference", ("chosen", "rejected")),
        ("completion", ("prompt", "completion")),
        ("completion", ("prompt", "label")),
        ("text", ("text",)),
    ]
    # Explicitly mapped roles say what the user meant; try their kinds first.
    candidates.sort(key=lambda c: not any(r in explicit for r in c[1]))
    for kind, roles in candidates:
        if all(has(r) for r in roles):
            cols = {r: mapping[r] for r in roles}
            if kind == "preference" and has("prompt"):
                cols["prompt"] = mapping["prompt"]
            return RowAdapter(kind, cols)
    raise ValidationError(
        f"{where}: cannot tell how to train on these rows: none of the column sets "
        f"messages ({mapping['messages']!r}), prompt + completion ({mapping['prompt']!r}, "
        f"{mapping['completion']!r}), text ({mapping['text']!r}) or chosen + rejected "
        f"is present; available columns: {available}",
        path="$.fields",
        hint='map your columns, e.g. fields = {prompt = "question", completion = "answer"}, '
        f"or set options.preset to one of: {', '.join(PRESETS)}",
    )


def _require_column(
    role: str, column: str, columns: Collection[str], where: str, available: str, explicit: bool
) -> None:
    if column in columns:
        return
    how = "is mapped to" if explicit else "defaults to"
    raise ValidationError(
        f"{where}: fields.{role} {how} column {column!r}, which is missing; "
        f"available columns: {available}",
        path=f"$.fields.{role}",
        hint=f'set fields.{role} to one of the available columns, e.g. fields = {{{role} = "..."}}',
    )

"""Render the IR reference (docs/ir-reference.md) from the Structs themselves.

Run ``python -m crucible_core._irdoc > docs/ir-reference.md``; a test fails when the
committed file differs, so every IR type a plugin author meets (including the
nested ones such as ``Prompt``, ``SamplingParams`` or ``StageDef``) is documented
with its real fields, types, defaults and constraints.
"""

from __future__ import annotations

import inspect
from typing import Any, cast

import msgspec
import msgspec.inspect as mi

from crucible_core import ir
from crucible_core.ir.base import FLOAT_MAX, IRStruct

__all__ = ["documented_types", "render", "type_text"]

_FAMILIES = {
    "crucible_core.ir.training": "TrainingIR",
    "crucible_core.ir.work": "Work",
    "crucible_core.ir.backend": "Backend",
    "crucible_core.ir.lineage": "Lineage",
    "crucible_core.ir.experiment": "Experiment",
    "crucible_core.ir.common": "Shared",
}


def documented_types() -> list[type[IRStruct]]:
    """Every IR Struct exported by :mod:`crucible_core.ir`, in family then name order."""
    found: list[type[IRStruct]] = []
    for name in ir.__all__:
        obj = getattr(ir, name)
        if isinstance(obj, type) and issubclass(obj, IRStruct) and obj is not IRStruct:
            found.append(obj)
    order = list(_FAMILIES)
    return sorted(found, key=lambda t: (order.index(t.__module__), t.__name__))


def _bounds(t: mi.IntType | mi.FloatType) -> str:
    """Constraints worth reading; +-float max (how the IR refuses inf/nan) goes without saying."""
    parts: list[str] = []
    lower, upper = t.ge if t.ge is not None else t.gt, t.le if t.le is not None else t.lt
    if isinstance(t, mi.FloatType) and lower is not None and upper is not None:
        parts.append("finite")
    for op, bound in ((">=", t.ge), (">", t.gt), ("<=", t.le), ("<", t.lt)):
        if bound is not None and abs(bound) != FLOAT_MAX:
            parts.append(f"{op} {bound}")
    return f" ({', '.join(parts)})" if parts else ""


def type_text(t: mi.Type) -> str:
    """A short, readable rendering of a field's type and its constraints."""
    if isinstance(t, mi.Metadata):
        return type_text(t.type)
    if isinstance(t, mi.UnionType):
        return " | ".join(type_text(x) for x in t.types)
    if isinstance(t, mi.StructType):
        return f"[`{t.cls.__name__}`](#{t.cls.__name__.lower()})"
    if isinstance(t, mi.LiteralType):
        return " | ".join(f'`"{v}"`' if isinstance(v, str) else f"`{v}`" for v in t.values)
    if isinstance(t, mi.IntType):
        return "int" + _bounds(t)
    if isinstance(t, mi.FloatType):
        return "float" + _bounds(t)
    if isinstance(t, mi.StrType):
        limits: list[str] = []
        if t.min_length is not None:
            limits.append(f"min {t.min_length} chars")
        if t.max_length is not None:
            limits.append(f"max {t.max_length} chars")
        if t.pattern is not None:
            limits.append(f"pattern `{t.pattern}`")
        return "str" + (f" ({', '.join(limits)})" if limits else "")
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return f"list[{type_text(t.item_type)}]"
    if isinstance(t, mi.TupleType):
        return f"tuple[{', '.join(type_text(x) for x in t.item_types)}]"
    if isinstance(t, mi.DictType):
        return f"dict[{type_text(t.key_type)}, {type_text(t.value_type)}]"
    if isinstance(t, mi.NoneType):
        return "null"
    if isinstance(t, mi.AnyType):
        return "any"
    if isinstance(t, mi.DateTimeType):
        return "datetime"
    return type(t).__name__.removesuffix("Type").lower()


def _description(t: mi.Type) -> str:
    if isinstance(t, mi.Metadata):
        extra = cast("dict[str, Any]", getattr(t, "extra_json_schema", None) or {})
        return inspect.cleandoc(str(extra.get("description", "")))
    if isinstance(t, mi.UnionType):
        return next((d for d in map(_description, t.types) if d), "")
    return ""


def _default(field: mi.Field) -> str:
    if field.required:
        return "required"
    has_default = field.default is not msgspec.NODEFAULT
    value: Any = field.default if has_default else field.default_factory()
    text = msgspec.json.encode(msgspec.to_builtins(value)).decode()
    return f"`{text}`" if len(text) <= 60 else "(see `crucible ir show`)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The Markdown IR reference."""
    lines = [
        "# IR reference",
        "",
        "Generated from `crucible_core/ir/` by "
        "`python -m crucible_core._irdoc > docs/ir-reference.md`; do not edit by hand.",
        "Every type decodes from JSON, TOML or msgpack with `crucible_core.ir.decode`; "
        "unknown fields are refused. Every type also has a JSON Schema in "
        "`ir_schemas/`. See `docs/ir.md` for how to read and write them.",
        "",
    ]
    family = ""
    for t in documented_types():
        if _FAMILIES[t.__module__] != family:
            family = _FAMILIES[t.__module__]
            lines += [f"## {family} (`{t.__module__}`)", ""]
        info = mi.type_info(t)
        assert isinstance(info, mi.StructType)
        lines += [f"### {t.__name__}", "", inspect.cleandoc(t.__doc__ or ""), ""]
        if info.tag_field is not None and info.tag is not None:
            lines += [f'Tagged: `{info.tag_field} = "{info.tag}"`.', ""]
        lines += ["| field | type | default | notes |", "|---|---|---|---|"]
        for f in info.fields:
            row = [f"`{f.encode_name}`", type_text(f.type), _default(f), _description(f.type)]
            lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")

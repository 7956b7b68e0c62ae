"""Hypothesis strategies for the IR that honour its declared constraints.

``st.from_type`` ignores ``msgspec.Meta`` constraints, so values are built
here from msgspec's own type description: bounds, lengths and patterns come
from the same ``Meta`` the schemas are generated from. The result is plain
data (what a file would contain), converted with the codec so that
``__post_init__`` rules apply; combinations those rules refuse are filtered.

``toml_safe=True`` avoids what TOML cannot represent: ``None`` (there is no
null) where a field's default is not ``None``, and ``None`` inside free-form
values.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from crucible_core.errors import ValidationError
from crucible_core.ir.codec import convert

_INT64 = 2**63 - 1
_ident = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)


def _json_values(toml_safe: bool) -> st.SearchStrategy[Any]:
    scalars: list[st.SearchStrategy[Any]] = [
        st.booleans(),
        st.integers(min_value=-(2**53), max_value=2**53),
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        st.text(max_size=20),
    ]
    if not toml_safe:
        scalars.append(st.none())
    base = st.one_of(*scalars)
    if toml_safe:
        # TOML arrays of mixed types are allowed in 1.0, but keep them uniform and simple.
        return st.one_of(base, st.lists(st.integers(-1000, 1000), max_size=3))
    return st.recursive(
        base,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(_ident, inner, max_size=3)
        ),
        max_leaves=6,
    )


def _for_type(t: mi.Type, *, toml_safe: bool, allow_none: bool) -> st.SearchStrategy[Any]:
    if isinstance(t, mi.Metadata):
        return _for_type(t.type, toml_safe=toml_safe, allow_none=allow_none)
    if isinstance(t, mi.UnionType):
        options = [
            _for_type(x, toml_safe=toml_safe, allow_none=allow_none)
            for x in t.types
            if not isinstance(x, mi.NoneType)
        ]
        if allow_none and any(isinstance(x, mi.NoneType) for x in t.types):
            options.append(st.none())
        return st.one_of(*options)
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else -(2**31))
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else 2**31)
        return st.integers(min_value=lo, max_value=min(hi, _INT64))
    if isinstance(t, mi.FloatType):
        lo = t.ge if t.ge is not None else t.gt
        hi = t.le if t.le is not None else t.lt
        return st.floats(
            min_value=lo if lo is not None else -1e9,
            max_value=hi if hi is not None else 1e9,
            exclude_min=t.gt is not None,
            exclude_max=t.lt is not None,
            allow_nan=False,
            allow_infinity=False,
        )
    if isinstance(t, mi.StrType):
        if t.pattern is not None:
            return st.from_regex(t.pattern, fullmatch=True).filter(
                lambda s: (
                    (t.max_length is None or len(s) <= t.max_length)
                    and len(s) >= (t.min_length or 0)
                )
            )
        return st.text(min_size=t.min_length or 0, max_size=min(t.max_length or 20, 20))
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.DateTimeType):
        return st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ).map(lambda d: d.isoformat())
    if isinstance(t, mi.ListType):
        return st.lists(
            _for_type(t.item_type, toml_safe=toml_safe, allow_none=allow_none),
            min_size=t.min_length or 0,
            max_size=min(t.max_length or 3, 3),
        )
    if isinstance(t, mi.TupleType):
        return st.tuples(
            *(_for_type(x, toml_safe=toml_safe, allow_none=allow_none) for x in t.item_types)
        ).map(list)
    if isinstance(t, mi.DictType):
        return st.dictionaries(
            _ident, _for_type(t.value_type, toml_safe=toml_safe, allow_none=allow_none), max_size=3
        )
    if isinstance(t, mi.AnyType):
        return _json_values(toml_safe)
    if isinstance(t, mi.StructType):
        return _for_struct(t, toml_safe=toml_safe)
    raise NotImplementedError(f"no strategy for {t!r}")  # a new IR field type needs one


def _for_struct(t: mi.StructType, *, toml_safe: bool) -> st.SearchStrategy[dict[str, Any]]:
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in t.fields:
        allow_none = not toml_safe or (f.default is None)
        if f.name == "schema_version":
            # Readers refuse another major version; minors are free.
            strategy: st.SearchStrategy[Any] = st.from_regex(r"1\.[0-9]{1,3}", fullmatch=True)
        else:
            strategy = _for_type(f.type, toml_safe=toml_safe, allow_none=allow_none)
        (required if f.required else optional)[f.encode_name] = strategy
    fixed = st.fixed_dictionaries(required, optional=optional)
    if t.tag_field is not None and t.tag is not None:
        tag_field, tag = t.tag_field, t.tag
        return fixed.map(lambda d: {tag_field: tag, **d})
    return fixed


def ir_values(type_: type[Any], *, toml_safe: bool = False) -> st.SearchStrategy[Any]:
    """Valid values of an IR type (built from plain data through the codec)."""
    info = mi.type_info(type_)

    def build(raw: Any) -> Any:
        try:
            return convert(raw, type_)
        except ValidationError:
            return None

    raw = _for_type(info, toml_safe=toml_safe, allow_none=not toml_safe)
    return raw.map(build).filter(lambda v: v is not None)


def builtins_of(value: Any) -> Any:
    """IR value -> plain data."""
    return msgspec.to_builtins(value)

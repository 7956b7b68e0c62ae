"""Decode and encode IR messages; turn every decode failure into a crucible error.

Everything from outside (files, HTTP bodies, queue payloads) enters through
:func:`decode`, :func:`decode_file` or :func:`convert`: msgspec validates on
decode only, never on construction. A failure becomes a
:class:`~crucible_core.errors.ValidationError` whose message starts with the
JSON path of the bad field and says what was expected and what was found,
e.g. ``$.learning_config.optimizer.lr: expected float > 0.0, got -1``, with a
hint (did-you-mean for a misspelt field, the allowed values of an enum).

No non-finite float survives decoding: typed float fields are bounded in
:mod:`crucible_core.ir.base` (checked by msgspec), and the free-form values
(``Params``, ``Any`` payloads) of a TOML or msgpack document or of
:func:`convert`-ed data are walked after decode (JSON cannot spell ``inf`` or
``nan``, so JSON decoding, the hot path, skips the walk).
"""

from __future__ import annotations

import datetime
import difflib
import functools
import inspect
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import msgspec
import msgspec.inspect as mi

from crucible_core.errors import ConfigError, NotFound, ValidationError
from crucible_core.ir.backend import Capabilities, CheckpointRef, Completion
from crucible_core.ir.base import SCHEMA_VERSION, IRStruct
from crucible_core.ir.experiment import Experiment
from crucible_core.ir.files import MAX_DOCUMENT_BYTES, read_document
from crucible_core.ir.lineage import Artifact, Trace
from crucible_core.ir.paths import resolve_paths
from crucible_core.ir.training import TrainingJob
from crucible_core.ir.work import Job

__all__ = [
    "IR_TYPES",
    "MAX_DOCUMENT_BYTES",
    "Format",
    "convert",
    "decode",
    "decode_file",
    "encode",
    "format_for_path",
    "guess_type",
    "ir_type",
    "schema",
    "schemas",
    "to_builtins",
]

T = TypeVar("T")
Format = Literal["json", "toml", "msgpack"]

#: The top-level messages: each carries ``schema_version`` and has a schema file.
IR_TYPES: dict[str, type[IRStruct]] = {
    "TrainingJob": TrainingJob,
    "Job": Job,
    "Experiment": Experiment,
    "Trace": Trace,
    "Artifact": Artifact,
    "Capabilities": Capabilities,
    "Completion": Completion,
    "CheckpointRef": CheckpointRef,
}

_SUPPORTED_MAJOR = SCHEMA_VERSION.split(".", 1)[0]
_SUPPORTED_PREFIX = _SUPPORTED_MAJOR + "."
_SUFFIX_FORMATS: dict[str, Format] = {
    ".json": "json",
    ".toml": "toml",
    ".msgpack": "msgpack",
    ".mpk": "msgpack",
}


def ir_type(name: str) -> type[IRStruct]:
    """The top-level IR type called ``name`` (case-insensitive)."""
    for key, value in IR_TYPES.items():
        if key.lower() == name.lower():
            return value
    close = difflib.get_close_matches(name, list(IR_TYPES), n=1)
    raise NotFound(
        f"no IR type named {name!r}",
        hint=(f"did you mean {close[0]!r}? " if close else "")
        + f"known types: {', '.join(IR_TYPES)}",
    )


def format_for_path(path: str | Path) -> Format:
    """The format a file's suffix implies (``.json``, ``.toml``, ``.msgpack``)."""
    suffix = Path(path).suffix.lower()
    try:
        return _SUFFIX_FORMATS[suffix]
    except KeyError:
        raise ConfigError(
            f"{path}: cannot tell the format from the suffix {suffix!r}",
            hint="use a .toml, .json or .msgpack file",
        ) from None


_DECODERS: dict[tuple[str, Any], Any] = {}


def _decoder(fmt: Format, type_: Any) -> Any:
    # A plain dict lookup: decode() is on hot paths (queue payloads, HTTP bodies).
    key = (fmt, type_)
    dec = _DECODERS.get(key)
    if dec is None:
        dec = msgspec.json.Decoder(type_) if fmt == "json" else msgspec.msgpack.Decoder(type_)
        _DECODERS[key] = dec
    return dec


def decode(data: bytes | str, type: type[T], *, format: Format = "json") -> T:
    """Decode ``data`` into ``type``, validating it; raise ``ValidationError`` on bad input."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ConfigError(
            f"document is {len(data)} bytes; the limit is {MAX_DOCUMENT_BYTES}",
            hint="IR documents are configurations; keep data in dataset files",
        )
    try:
        if format == "toml":
            obj = msgspec.toml.decode(data, type=type)
        else:
            obj = cast(T, _decoder(format, type).decode(data))
    except msgspec.ValidationError as exc:
        raw = _raw(data, format)
        raise _validation_error(exc, type, raw) from None
    except (msgspec.DecodeError, RecursionError, ValueError) as exc:
        raise _syntax_error(exc, format) from None
    _check_version(obj)
    if format != "json" and _holds_free_form(type):
        _check_finite(obj, "$")
    return obj


def convert(obj: Any, type: type[T]) -> T:
    """Validate already-parsed Python data (dicts, lists, scalars) into ``type``."""
    try:
        out = msgspec.convert(obj, type=type, strict=False)
    except msgspec.ValidationError as exc:
        raise _validation_error(exc, type, obj) from None
    except RecursionError:
        raise ValidationError("$: document is nested too deeply", path="$") from None
    _check_version(out)
    if _holds_free_form(type):
        _check_finite(out, "$")
    return out


def decode_file(path: str | Path, type: type[T] | None = None) -> Any:
    """Read and decode a file; the format comes from its suffix.

    With ``type=None`` the IR type is guessed from the document's keys
    (:func:`guess_type`); errors name the file. The file is read with
    :func:`~crucible_core.ir.files.read_document`: only a regular file of at
    most :data:`MAX_DOCUMENT_BYTES` is read. Relative paths in a job resolve
    against the file's directory (:mod:`crucible_core.ir.paths`).
    """
    p = Path(path)
    fmt = format_for_path(p)
    data = read_document(p, limit=MAX_DOCUMENT_BYTES)
    if not data.strip():
        raise ConfigError(f"{p}: the file is empty", hint="write an IR document into it")
    try:
        target: Any = type if type is not None else guess_type(_raw_or_raise(data, fmt))
        return resolve_paths(decode(data, target, format=fmt), p.parent)
    except ValidationError as exc:
        raise ValidationError(
            f"{p}: {exc.message}", path=exc.path, hint=exc.hint, **exc.details
        ) from None
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc.message}", hint=exc.hint) from None


def guess_type(raw: Any) -> type[IRStruct]:
    """Pick the top-level IR type whose fields fit a parsed document's keys."""
    if not isinstance(raw, Mapping):
        raise ValidationError(
            f"$: expected an object at the top level, got {_kind(raw)}",
            path="$",
        )
    keys = set(cast(Mapping[str, Any], raw))
    fits: list[type[IRStruct]] = []
    for t in IR_TYPES.values():
        info = cast(mi.StructType, mi.type_info(t))
        names = {f.encode_name for f in info.fields}
        required = {f.encode_name for f in info.fields if f.required}
        if keys <= names and required <= keys:
            fits.append(t)
    if len(fits) == 1:
        return fits[0]
    if fits:
        names = ", ".join(t.__name__ for t in fits)
        raise ConfigError(
            f"cannot tell which IR type this document is (it fits {names})",
            hint=f"pass --type with one of: {names}",
        )
    raise ConfigError(
        f"cannot tell which IR type this document is: {_closest_misfit(keys)}",
        hint=f"fix that, or pass --type with one of: {', '.join(IR_TYPES)}",
    )


def _closest_misfit(keys: set[str]) -> str:
    """Name the IR type a document was most likely meant to be, and why it does not fit.

    The closest type is the one sharing the most keys with the document (ties go to
    the earlier type in :data:`IR_TYPES`), so a document that only lacks a required
    field is told which field, instead of "matches: none".
    """
    best: tuple[int, str, list[str], list[str]] | None = None
    for name, t in IR_TYPES.items():
        info = cast(mi.StructType, mi.type_info(t))
        names = {f.encode_name for f in info.fields}
        required = [f.encode_name for f in info.fields if f.required]
        shared = len(keys & names)
        if best is None or shared > best[0]:
            missing = [k for k in required if k not in keys]
            unknown = sorted(keys - names)
            best = (shared, name, missing, unknown)
    assert best is not None  # IR_TYPES is never empty
    _, name, missing, unknown = best
    reasons: list[str] = []
    if missing:
        reasons.append("missing required field(s) " + ", ".join(f"$.{k}" for k in missing))
    if unknown:
        reasons.append("unknown field(s) " + ", ".join(f"$.{k}" for k in unknown))
    return f"closest is {name}, " + "; ".join(reasons)


def encode(obj: Any, *, format: Format = "json") -> bytes:
    """Encode an IR value (or builtins) as JSON, TOML or msgpack bytes."""
    if format == "json":
        return msgspec.json.encode(obj)
    if format == "msgpack":
        return msgspec.msgpack.encode(obj)
    # TOML has native date-times: keep them (an ISO string would not decode back).
    return msgspec.toml.encode(
        _drop_none(msgspec.to_builtins(obj, builtin_types=(datetime.datetime, datetime.date)))
    )


def to_builtins(obj: Any) -> Any:
    """IR value -> plain dicts/lists/scalars (datetimes as ISO strings)."""
    return msgspec.to_builtins(obj)


def schema(type_: type[Any]) -> dict[str, Any]:
    """JSON Schema 2020-12 of one IR type.

    Descriptions (struct docstrings) are normalised here with
    :func:`inspect.cleandoc`: msgspec releases differ in how they clean
    docstrings, and the committed ``ir_schemas/`` must not depend on which
    release generated them.
    """
    out = _clean_descriptions(msgspec.json.schema(type_))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": type_.__name__,
        **out,
    }


def schemas(*, nested: bool = False) -> dict[str, dict[str, Any]]:
    """The JSON Schema of every top-level IR type, by name; with ``nested``, also of
    every Struct they contain (``Prompt``, ``StageDef``, ``LoRA``, ...)."""
    out = {name: schema(t) for name, t in IR_TYPES.items()}
    if nested:
        for t in nested_types():
            out.setdefault(t.__name__, schema(t))
    return out


def nested_types() -> list[type[Any]]:
    """Every other IR Struct :mod:`crucible_core.ir` exports (``Prompt``, ``SamplingParams``,
    ``StageDef``, ``LoRA``, ...), by name: the parts of messages and the values
    backends exchange."""
    import crucible_core.ir as ir

    by_name: dict[str, type[Any]] = {}
    for name in ir.__all__:
        t = getattr(ir, name)
        if isinstance(t, type) and issubclass(t, IRStruct) and t is not IRStruct:
            by_name.setdefault(t.__name__, t)  # aliases (Resources = ResourceSpec) once
    return [t for n, t in sorted(by_name.items()) if n not in IR_TYPES]


# -- internals ---------------------------------------------------------------


def _clean_descriptions(node: Any) -> Any:
    # Every "description" string in a schema, dedented the one way (idempotent).
    if isinstance(node, dict):
        return {
            k: inspect.cleandoc(v)
            if k == "description" and isinstance(v, str)
            else _clean_descriptions(v)
            for k, v in cast(dict[str, Any], node).items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(v) for v in cast(list[Any], node)]
    return node


def _drop_none(obj: Any) -> Any:
    # TOML has no null: leave unset optionals out (decoding restores the default None).
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in cast(dict[str, Any], obj).items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in cast(list[Any], obj)]
    return obj


def _raw(data: bytes | str, fmt: Format) -> Any:
    try:
        return _raw_or_raise(data, fmt)
    except ConfigError:
        return None


def _raw_or_raise(data: bytes | str, fmt: Format) -> Any:
    try:
        if fmt == "json":
            return msgspec.json.decode(data)
        if fmt == "msgpack":
            return msgspec.msgpack.decode(data.encode() if isinstance(data, str) else data)
        return msgspec.toml.decode(data)
    except (msgspec.DecodeError, RecursionError, ValueError) as exc:
        raise _syntax_error(exc, fmt) from None


def _syntax_error(exc: BaseException, fmt: Format) -> ConfigError:
    if isinstance(exc, RecursionError):
        return ValidationError(
            "$: document is nested too deeply", path="$", hint="flatten the document"
        )
    return ConfigError(f"malformed {fmt.upper()}: {exc}", hint=f"fix the {fmt.upper()} syntax")


def _version_error(version: Any) -> ValidationError | None:
    if not isinstance(version, str) or version.split(".", 1)[0] == _SUPPORTED_MAJOR:
        return None
    return ValidationError(
        f"$.schema_version: this crucible reads schema {_SUPPORTED_MAJOR}.x, "
        f"the document was written with {version}",
        path="$.schema_version",
        hint="upgrade crucible, or rewrite the document for schema "
        f"{SCHEMA_VERSION} (`crucible ir show NAME` prints the current defaults)",
    )


def _check_version(obj: Any) -> None:
    version = getattr(obj, "schema_version", None)
    if version is None or version.startswith(_SUPPORTED_PREFIX):
        return
    error = _version_error(version)
    if error is not None:
        raise error


_FREE_FORM: dict[Any, bool] = {}


def _holds_free_form(type_: Any) -> bool:
    """Whether values of ``type_`` can hold untyped (``Any``) parts: only those are walked."""
    try:
        return _FREE_FORM[type_]
    except KeyError:
        pass
    except TypeError:  # an unhashable type expression: walk to be safe
        return True
    holds = _holds_any(mi.type_info(type_), set())
    _FREE_FORM[type_] = holds
    return holds


@functools.cache
def _free_form_fields(cls: type[Any]) -> tuple[tuple[str, str], ...]:
    """(attribute, encoded name) of the fields of ``cls`` that can hold untyped values."""
    info = cast(mi.StructType, mi.type_info(cls))
    return tuple((f.name, f.encode_name) for f in info.fields if _holds_any(f.type, set[int]()))


def _holds_any(t: mi.Type, seen: set[int]) -> bool:
    if isinstance(t, mi.AnyType):
        return True
    if id(t) in seen:
        return False
    seen.add(id(t))
    if isinstance(t, mi.StructType):
        return any(_holds_any(f.type, seen) for f in t.fields)
    if isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return _holds_any(t.item_type, seen)
    if isinstance(t, mi.TupleType):
        return any(_holds_any(x, seen) for x in t.item_types)
    if isinstance(t, mi.DictType):
        return _holds_any(t.key_type, seen) or _holds_any(t.value_type, seen)
    if isinstance(t, mi.UnionType):
        return any(_holds_any(x, seen) for x in t.types)
    return False


def _check_finite(value: Any, path: str) -> None:
    """Raise ``ValidationError`` at the first non-finite float under ``value``.

    Only the parts that msgspec did not type-check are walked: struct fields
    that can hold ``Any`` (typed floats were bounded by the decoder).
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(
                f"{path}: expected a finite number, got {value}",
                path=path,
                hint="inf and nan are not valid settings; write a finite number",
            )
    elif isinstance(value, msgspec.Struct):
        for name, encoded in _free_form_fields(type(value)):
            _check_finite(getattr(value, name), f"{path}.{encoded}")
    elif isinstance(value, dict):
        for key, item in cast(dict[Any, Any], value).items():
            _check_finite(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(cast(list[Any], value)):
            _check_finite(item, f"{path}[{i}]")


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _validation_error(exc: msgspec.ValidationError, type_: Any, raw: Any) -> ValidationError:
    m = _AT.match(str(exc))
    msg = m.group("msg") if m else str(exc)
    path = (m.group("path") if m else None) or "$"
    parts = _split_path(path)
    # A wrong major version explains every other error: report it first.
    if isinstance(raw, Mapping):
        version_error = _version_error(cast(Mapping[str, Any], raw).get("schema_version"))
        if version_error is not None:
            return version_error
    root = mi.type_info(type_)
    node_type = _type_at(root, parts)
    if node_type is None and parts and isinstance(parts[-1], str):
        # A union's tag field (``kind``, ``name``) is not a struct field: list the tags.
        parent = _type_at(root, parts[:-1])
        if parent is not None and any(
            isinstance(c, mi.StructType) and c.tag_field == parts[-1] for c in _unwrap(parent)
        ):
            node_type = parent
    hint: str | None = None
    # msgspec's own messages quote types in backticks; messages from __post_init__
    # are ours and keep their markup.
    text = msg.replace("`", "") if msg.startswith(("Expected", "Invalid")) else msg
    text = text[0].lower() + text[1:] if text else text
    unknown = re.match(r"Object contains unknown field `(.+)`", msg)
    missing = re.match(r"Object missing required field `(.+)`", msg)
    if unknown:
        field_name = unknown.group(1)
        path = f"{path}.{field_name}"
        known = list(dict.fromkeys(_field_names(_select_variant(node_type, raw, parts))))
        close = difflib.get_close_matches(field_name, known, n=1)
        text = "unknown field"
        hint = f"did you mean {close[0]!r}?" if close else None
        if known:
            hint = (hint + " " if hint else "") + f"known fields: {', '.join(known)}"
    elif missing:
        path = f"{path}.{missing.group(1)}"
        text = "required field is missing"
        hint = f"add `{missing.group(1)}`"
    else:
        got = _value_at(raw, parts)
        allowed = _allowed_values(node_type)
        if allowed:
            got_repr = repr(got) if got is not _MISSING else "?"
            text = f"expected one of {', '.join(map(repr, allowed))}, got {got_repr}"
            if isinstance(got, str):
                close = difflib.get_close_matches(got, [str(a) for a in allowed], n=1)
                hint = f"did you mean {close[0]!r}?" if close else None
        elif isinstance(got, float) and not math.isfinite(got):
            text = f"expected a finite number, got {got}"
            hint = "inf and nan are not valid settings; write a finite number"
        elif got is not _MISSING and msg.startswith("Expected"):
            text = re.sub(r", got .*$", "", text) + f", got {_short(got)}"
    return ValidationError(f"{path}: {text}", path=path, hint=hint)


_MISSING: Any = object()


def _split_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for name, index in _PATH_PART.findall(path[1:]):
        parts.append(int(index) if index else name)
    return parts


def _value_at(raw: Any, parts: list[str | int]) -> Any:
    node = raw
    for part in parts:
        if isinstance(part, int) and isinstance(node, list) and part < len(cast(list[Any], node)):
            node = cast(list[Any], node)[part]
        elif isinstance(part, str) and isinstance(node, Mapping) and part in node:
            node = cast(Mapping[str, Any], node)[part]
        else:
            return _MISSING
    return node


def _unwrap(t: mi.Type) -> list[mi.Type]:
    if isinstance(t, mi.UnionType):
        return [x for x in t.types if not isinstance(x, mi.NoneType)]
    return [t]


def _type_at(t: mi.Type, parts: list[str | int]) -> mi.Type | None:
    node: mi.Type | None = t
    for part in parts:
        if node is None:
            return None
        nxt: mi.Type | None = None
        for cand in _unwrap(node):
            if isinstance(part, str) and isinstance(cand, mi.StructType):
                for f in cand.fields:
                    if f.encode_name == part:
                        nxt = f.type
            elif isinstance(part, int) and isinstance(cand, mi.ListType | mi.TupleType):
                nxt = cand.item_type if isinstance(cand, mi.ListType) else None
            elif isinstance(part, str) and isinstance(cand, mi.DictType):
                nxt = cand.value_type
            if nxt is not None:
                break
        node = nxt
    return node


def _field_names(t: mi.Type | None) -> list[str]:
    names: list[str] = []
    if t is None:
        return names
    for cand in _unwrap(t):
        if isinstance(cand, mi.StructType):
            names.extend(f.encode_name for f in cand.fields)
    return names


def _select_variant(t: mi.Type | None, raw: Any, parts: list[str | int]) -> mi.Type | None:
    # For a tagged union, the variant the document chose (by its tag value).
    if t is None:
        return None
    structs = [c for c in _unwrap(t) if isinstance(c, mi.StructType)]
    node = _value_at(raw, parts)
    if len(structs) > 1 and isinstance(node, Mapping):
        for cand in structs:
            tag = cast(Mapping[str, Any], node).get(cand.tag_field or "")
            if cand.tag is not None and tag == cand.tag:
                return cand
    return t


def _allowed_values(t: mi.Type | None) -> list[Any]:
    if t is None:
        return []
    values: list[Any] = []
    for cand in _unwrap(t):
        if isinstance(cand, mi.LiteralType):
            values.extend(cand.values)
        elif isinstance(cand, mi.StructType) and cand.tag is not None:
            values.append(cand.tag)
    return values


def _kind(value: Any) -> str:
    names: dict[type[Any], str] = {dict: "an object", list: "an array", str: "a string"}
    kind = cast(type[Any], type(value))
    return names.get(kind, kind.__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

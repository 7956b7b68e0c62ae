"""``crucible ir``: schemas, validation and defaults of the IR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, cast

import msgspec
import msgspec.inspect as mi

from crucible_core.cli.output import print_json
from crucible_core.errors import ConfigError
from crucible_core.ir import codec


def record_schemas() -> dict[str, dict[str, Any]]:
    """The schemas of what a run writes beside the IR: ``RunManifest`` (``manifest.json``)."""
    from crucible_core.records.manifest import RunManifest

    return {"RunManifest": codec.schema(RunManifest)}


def write_schemas(directory: Path) -> list[Path]:
    """Write ``<Name>.schema.json`` for every IR type, nested ones included, and for the
    run records (:func:`record_schemas`); return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, schema in {**codec.schemas(nested=True), **record_schemas()}.items():
        path = directory / f"{name}.schema.json"
        text = msgspec.json.format(msgspec.json.encode(schema), indent=2).decode() + "\n"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def skeleton(type_: Any) -> Any:
    """A minimal valid-looking value for ``type_``: defaults, with placeholders where required."""
    return _skeleton(mi.type_info(type_), "value")


def _skeleton(t: mi.Type, name: str) -> Any:
    if isinstance(t, mi.Metadata):  # Annotated[..., Meta(description=...)]
        return _skeleton(t.type, name)
    if isinstance(t, mi.UnionType):
        non_none = [x for x in t.types if not isinstance(x, mi.NoneType)]
        return _skeleton(non_none[0], name) if non_none else None
    if isinstance(t, mi.StructType):
        out: dict[str, Any] = {}
        if t.tag_field is not None and t.tag is not None:
            out[t.tag_field] = t.tag
        for f in t.fields:
            if f.required:
                out[f.encode_name] = _skeleton(f.type, f.name)
            elif f.default is not msgspec.NODEFAULT:
                out[f.encode_name] = msgspec.to_builtins(f.default)
            elif f.default_factory is not msgspec.NODEFAULT:
                out[f.encode_name] = msgspec.to_builtins(f.default_factory())
        return out
    if isinstance(t, mi.LiteralType):
        return t.values[0]
    if isinstance(t, mi.IntType):
        return max(1, t.ge or 0)
    if isinstance(t, mi.FloatType):
        return 1.0
    if isinstance(t, mi.StrType):
        return f"<{name}>"
    if isinstance(t, mi.ListType):
        return []
    if isinstance(t, mi.DictType):
        return {}
    if isinstance(t, mi.BoolType):
        return False
    return None


class _IrCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="ir_command", metavar="ACTION", required=True)
        p = sub.add_parser("schemas", help="print the JSON Schemas, or write them to a directory")
        p.add_argument(
            "--write", metavar="DIR", type=Path, help="write <Name>.schema.json files here"
        )
        p = sub.add_parser(
            "validate",
            help="check an IR file (exit 0 valid, 2 invalid)",
            description="Validate a .toml, .json or .msgpack IR document. "
            "Exit 0 if valid, 2 if not, with the path of the bad field.",
        )
        p.add_argument("file", type=Path)
        p.add_argument(
            "--type", dest="type_name", metavar="NAME", help="IR type (guessed if omitted)"
        )
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p = sub.add_parser("show", help="print an IR type's defaults (TOML by default)")
        p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(codec.IR_TYPES)}")
        p.add_argument("--format", choices=["toml", "json"], default="toml")
        sub.add_parser("types", help="list the top-level IR types")

    def run(self, args: argparse.Namespace) -> int:
        action = cast(str, args.ir_command)
        if action == "schemas":
            if args.write:
                for path in write_schemas(args.write):
                    sys.stdout.write(f"wrote {path}\n")
            else:
                print_json(codec.schemas())
            return 0
        if action == "validate":
            type_ = codec.ir_type(args.type_name) if args.type_name else None
            obj = codec.decode_file(args.file, type_)
            name = type(obj).__name__
            if args.json:
                print_json({"valid": True, "type": name, "file": str(args.file)})
            else:
                sys.stdout.write(f"{args.file}: valid {name}\n")
            return 0
        if action == "show":
            type_ = codec.ir_type(args.name)
            value = skeleton(type_)
            if args.format == "json":
                print_json(value)
            else:
                sys.stdout.write(codec.encode(value, format="toml").decode())
            return 0
        if action == "types":
            for name, t in codec.IR_TYPES.items():
                doc = (t.__doc__ or "").strip().splitlines()[0] if t.__doc__ else ""
                sys.stdout.write(f"{name:14} {doc}\n")
            return 0
        raise ConfigError(f"unknown ir action {action!r}")  # pragma: no cover - argparse guards


command = _IrCommand()

"""``crucible models list|show|register|alias|rollback|tag|archive`` over :class:`Registry`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from crucible_core.cli.output import print_json, print_table
from crucible_core.errors import ConfigError
from crucible_registry.names import parse_ref, parse_tag
from crucible_registry.registry import UNSET, Registry

__all__ = ["ModelsCommand"]


def _expect(text: str | None) -> Any:
    if text is None:
        return UNSET
    if text == "none":
        return None
    if text.isdigit():
        return int(text)
    raise ConfigError(f"--expect {text!r}", hint="give the version you expect it to hold, or none")


class ModelsCommand:
    """The ``models`` subcommands; every one has ``--json``."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = "The model registry: versions of trained weights, aliases, tags."
        sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
        p = sub.add_parser("list", help="registered names with their versions and aliases")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("show", help="a name (versions, aliases, history) or one version")
        p.add_argument("ref", metavar="NAME[/VERSION|@ALIAS]")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("register", help="record a run's weights as a new version")
        p.add_argument("run", metavar="RUN", help="run id, run dir or path in one")
        p.add_argument("--name", required=True)
        p.add_argument("--checkpoint", help="a kept step (default: the final weights)")
        p.add_argument("--tag", action="append", default=[], metavar="K=V")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("alias", help="point an alias at a version (recorded)")
        p.add_argument("name")
        p.add_argument("alias")
        p.add_argument("version", type=int)
        p.add_argument("--reason", default="")
        p.add_argument("--expect", help="refuse unless the alias holds this version now (or none)")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("rollback", help="give an alias back to its previous holder")
        p.add_argument("name")
        p.add_argument("alias")
        p.add_argument("--reason", default="")
        p.add_argument("--expect", help="refuse unless the alias holds this version now")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("tag", help="set or remove tags on a name or a version")
        p.add_argument("ref", metavar="NAME[/VERSION]")
        p.add_argument("tags", nargs="*", metavar="K=V")
        p.add_argument("--remove", action="append", default=[], metavar="KEY")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("archive", help="archive a version (kept, not aliasable)")
        p.add_argument("name")
        p.add_argument("version", type=int)
        p.add_argument("--reason", default="")
        p.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        with Registry() as reg:
            return getattr(self, f"_{args.models_command}")(reg, args)

    def _list(self, reg: Registry, args: argparse.Namespace) -> int:
        models = reg.models()
        if args.json:
            print_json([msgspec.to_builtins(m) for m in models])
            return 0
        print_table(
            ["name", "versions", "latest", "aliases"],
            [
                [m.name, len(m.versions), m.latest,
                 " ".join(f"{a}=v{v}" for a, v in m.aliases.items())]
                for m in models
            ],
        )  # fmt: skip
        return 0

    def _show(self, reg: Registry, args: argparse.Namespace) -> int:
        ref = parse_ref(args.ref)
        if ref.version is None and ref.alias is None and not ref.latest:
            model = reg.model(ref.name)
            history = reg.history(ref.name)
            versions = reg.versions(ref.name)
            if args.json:
                print_json({**msgspec.to_builtins(model),
                            "versions": [msgspec.to_builtins(v) for v in versions],
                            "history": [msgspec.to_builtins(e) for e in history]})  # fmt: skip
                return 0
            print_table(
                ["version", "run", "checkpoint", "aliases", "archived", "created"],
                [[v.version, v.run_id, v.checkpoint, " ".join(v.aliases),
                  "yes" if v.archived else "", v.created_at] for v in versions],
            )  # fmt: skip
            if history:
                sys.stdout.write("\nalias history:\n")
                for e in history:
                    prev = "-" if e.previous is None else f"v{e.previous}"
                    sys.stdout.write(
                        f"  #{e.seq} {e.at} {e.actor}: {e.alias} {prev} -> v{e.version}"
                        f" ({e.action}){' ' + repr(e.reason) if e.reason else ''}\n"
                    )
            return 0
        v = reg.resolve(ref)
        if args.json:
            print_json(msgspec.to_builtins(v))
            return 0
        for key, value in msgspec.to_builtins(v).items():
            sys.stdout.write(f"{key} = {value!r}\n")
        return 0

    def _register(self, reg: Registry, args: argparse.Namespace) -> int:
        tags = dict(parse_tag(t) for t in args.tag)
        v = reg.register(args.run, name=args.name, checkpoint=args.checkpoint, tags=tags)
        if args.json:
            print_json(msgspec.to_builtins(v))
        else:
            word = "already registered as" if v.existing else "registered"
            sys.stdout.write(f"{word} {v.name} version {v.version} ({v.run_id}/{v.checkpoint})\n")
        return 0

    def _alias(self, reg: Registry, args: argparse.Namespace) -> int:
        e = reg.set_alias(args.name, args.alias, args.version, reason=args.reason,
                          expected=_expect(args.expect))  # fmt: skip
        return self._event(e, args)

    def _rollback(self, reg: Registry, args: argparse.Namespace) -> int:
        e = reg.rollback(args.name, args.alias, reason=args.reason, expected=_expect(args.expect))
        return self._event(e, args)

    def _event(self, e: Any, args: argparse.Namespace) -> int:
        if args.json:
            print_json(msgspec.to_builtins(e))
        else:
            prev = "nothing" if e.previous is None else f"v{e.previous}"
            sys.stdout.write(f"{e.name}@{e.alias}: {prev} -> v{e.version}\n")
        return 0

    def _tag(self, reg: Registry, args: argparse.Namespace) -> int:
        ref = parse_ref(args.ref)
        if ref.alias is not None or ref.latest:
            raise ConfigError(f"{args.ref!r}: tag a name or NAME/VERSION")
        tags = reg.tag(ref.name, dict(parse_tag(t) for t in args.tags), version=ref.version,
                       remove=args.remove)  # fmt: skip
        if args.json:
            print_json(tags)
        else:
            for k, v in tags.items():
                sys.stdout.write(f"{k} = {v}\n")
        return 0

    def _archive(self, reg: Registry, args: argparse.Namespace) -> int:
        v = reg.archive(args.name, args.version, reason=args.reason)
        if args.json:
            print_json(msgspec.to_builtins(v))
        else:
            sys.stdout.write(f"archived {v.name} version {v.version}\n")
        return 0

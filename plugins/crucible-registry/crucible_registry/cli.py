"""``crucible models ...`` over :class:`Registry`: one subcommand per library call.

list, show, register, alias (set, ``--remove``), rollback, tag, archive,
gate (add/list/rm/check), evals (add/list), link, lineage, export, gc.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from crucible_core.cli.output import print_json, print_table
from crucible_core.errors import ConfigError
from crucible_registry.names import parse_ref, parse_tag
from crucible_registry.registry import UNSET, Registry

if TYPE_CHECKING:
    from crucible_core.records.lineage import LineageNode

__all__ = ["ModelsCommand"]

_RELATIONS = "fine_tuned_from, dpo_from, rl_from, distilled_from, merged_from, exported_from"


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
        parser.description = (
            "The model registry: versions of trained weights, aliases, promotion gates, "
            "tags, lineage."
        )
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
        p.add_argument(
            "--relation",
            default="fine_tuned_from",
            help=f"how it came from its base model ({_RELATIONS})",
        )
        p.add_argument(
            "--from",
            dest="links",
            action="append",
            default=[],
            metavar="REL=REF",
            help="another parent: dpo_from=dates/2, merged_from=dates@prod, "
            "distilled_from=model:big...",
        )
        p.add_argument(
            "--eval",
            dest="evals",
            action="append",
            default=[],
            metavar="EVAL",
            help="a `crucible eval` result of this checkpoint (eval-<id>.json or its id): "
            "its metrics become eval.SUITE.METRIC, gate evidence",
        )
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("alias", help="point an alias at a version (gated, recorded)")
        p.add_argument("name")
        p.add_argument("alias")
        p.add_argument("version", type=int, nargs="?")
        p.add_argument("--remove", action="store_true", help="remove the alias (recorded)")
        p.add_argument("--reason", default="")
        p.add_argument("--expect", help="refuse unless the alias holds this version now (or none)")
        p.add_argument(
            "--force", action="store_true", help="override failing gates (needs --reason)"
        )
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
        self._configure_more(sub)

    def _configure_more(self, sub: Any) -> None:
        p = sub.add_parser("gate", help="promotion rules per name and alias")
        gs = p.add_subparsers(dest="gate_command", metavar="ACTION", required=True)
        g = gs.add_parser("add", help="add rules, e.g. 'eval.gsm8k.exact_match >= 0.4'")
        g.add_argument("name")
        g.add_argument("alias")
        g.add_argument("rules", nargs="+", metavar="RULE")
        g.add_argument("--json", action="store_true")
        g = gs.add_parser("list", help="the rules of a name (of one alias)")
        g.add_argument("name")
        g.add_argument("alias", nargs="?")
        g.add_argument("--json", action="store_true")
        g = gs.add_parser("rm", help="remove one rule (every rule of the alias if none given)")
        g.add_argument("name")
        g.add_argument("alias")
        g.add_argument("rule", nargs="?")
        g.add_argument("--json", action="store_true")
        g = gs.add_parser("check", help="what the gates say of moving the alias to VERSION now")
        g.add_argument("name")
        g.add_argument("alias")
        g.add_argument("version", type=int)
        g.add_argument("--json", action="store_true")
        p = sub.add_parser("evals", help="evaluation results of versions (what gates read)")
        es = p.add_subparsers(dest="evals_command", metavar="ACTION", required=True)
        e = es.add_parser("add", help="record METRIC=VALUE... as eval.SUITE.METRIC")
        e.add_argument("ref", metavar="NAME/VERSION")
        e.add_argument("metrics", nargs="+", metavar="METRIC=VALUE")
        e.add_argument("--suite", required=True)
        e.add_argument("--eval-id")
        e.add_argument(
            "--samples",
            type=Path,
            metavar="FILE.json",
            help='per-sample scores: {"METRIC": [score, ...]}',
        )
        e.add_argument("--json", action="store_true")
        e = es.add_parser("import", help="record `crucible eval` results of the version")
        e.add_argument("ref", metavar="NAME/VERSION")
        e.add_argument("files", nargs="+", metavar="EVAL", help="eval-<id>.json or an eval id")
        e.add_argument("--suite", help="default: the dataset's name (dates.jsonl -> dates)")
        e.add_argument("--json", action="store_true")
        e = es.add_parser("list", help="the evaluations of a version")
        e.add_argument("ref", metavar="NAME/VERSION")
        e.add_argument("--json", action="store_true")
        p = sub.add_parser("link", help="record that a version was made from something")
        p.add_argument("ref", metavar="NAME/VERSION")
        p.add_argument("relation", help=_RELATIONS)
        p.add_argument(
            "target",
            metavar="TARGET",
            help="a version (NAME/2, NAME@ALIAS), model:X, dataset:X or a run id",
        )
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("lineage", help="ancestors and descendants of a version, or which "
                           "versions a dataset touches")  # fmt: skip
        p.add_argument("ref", nargs="?", metavar="NAME/VERSION")
        p.add_argument("--dataset", metavar="X", help="dataset:URI, a URI or a content hash")
        p.add_argument("--depth", type=int, metavar="N")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("export", help="the lineage graph as GraphML, DOT or JSON")
        p.add_argument(
            "refs",
            nargs="*",
            metavar="REF",
            help="versions (or model:/dataset: nodes) to start from; default: all",
        )
        p.add_argument("--format", choices=("graphml", "dot", "json"), default="graphml")
        p.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
        p = sub.add_parser("gc", help="forget archived versions that hold no alias; unpin them")
        p.add_argument("--yes", action="store_true", help="do it (default: only list them)")
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
            gates = reg.gates(ref.name)
            if args.json:
                print_json({**msgspec.to_builtins(model),
                            "versions": [msgspec.to_builtins(v) for v in versions],
                            "history": [msgspec.to_builtins(e) for e in history],
                            "gates": [msgspec.to_builtins(g) for g in gates]})  # fmt: skip
                return 0
            print_table(
                ["version", "run", "checkpoint", "aliases", "archived", "created"],
                [[v.version, v.run_id, v.checkpoint, " ".join(v.aliases),
                  "yes" if v.archived else "", v.created_at] for v in versions],
            )  # fmt: skip
            if gates:
                sys.stdout.write("\ngates:\n")
                for g in gates:
                    sys.stdout.write(f"  {g.alias}: {g.rule}\n")
            if history:
                sys.stdout.write("\nalias history:\n")
                for e in history:
                    prev = "-" if e.previous is None else f"v{e.previous}"
                    now = "-" if e.version is None else f"v{e.version}"
                    forced = " FORCED" if e.forced else ""
                    sys.stdout.write(
                        f"  #{e.seq} {e.at} {e.actor}: {e.alias} {prev} -> {now}"
                        f" ({e.action}{forced}){' ' + repr(e.reason) if e.reason else ''}\n"
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
        links = [_link(text) for text in args.links]
        v = reg.register(args.run, name=args.name, checkpoint=args.checkpoint, tags=tags,
                         base_relation=args.relation, links=links,
                         evals=args.evals)  # fmt: skip
        if args.json:
            print_json(msgspec.to_builtins(v))
        else:
            word = "already registered as" if v.existing else "registered"
            sys.stdout.write(f"{word} {v.name} version {v.version} ({v.run_id}/{v.checkpoint})\n")
        return 0

    def _alias(self, reg: Registry, args: argparse.Namespace) -> int:
        if args.remove:
            if args.version is not None or args.force:
                raise ConfigError("--remove takes no VERSION and no --force")
            e = reg.remove_alias(args.name, args.alias, reason=args.reason,
                                 expected=_expect(args.expect))  # fmt: skip
            return self._event(e, args)
        if args.version is None:
            raise ConfigError(
                "alias needs a VERSION", hint=f"crucible models alias {args.name} {args.alias} 3"
            )
        e = reg.set_alias(args.name, args.alias, args.version, reason=args.reason,
                          expected=_expect(args.expect), force=args.force)  # fmt: skip
        if not args.json:
            for r in e.evidence:
                sys.stdout.write(f"  {r.line()}\n")
            if e.forced:
                sys.stdout.write("  forced past the failing gates (recorded)\n")
        return self._event(e, args)

    def _rollback(self, reg: Registry, args: argparse.Namespace) -> int:
        e = reg.rollback(args.name, args.alias, reason=args.reason, expected=_expect(args.expect))
        return self._event(e, args)

    def _event(self, e: Any, args: argparse.Namespace) -> int:
        if args.json:
            print_json(msgspec.to_builtins(e))
        else:
            prev = "nothing" if e.previous is None else f"v{e.previous}"
            now = "removed" if e.version is None else f"v{e.version}"
            sys.stdout.write(f"{e.name}@{e.alias}: {prev} -> {now}\n")
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

    # -- gates, evaluations --------------------------------------------------

    def _gate(self, reg: Registry, args: argparse.Namespace) -> int:
        action = args.gate_command
        if action == "add":
            gates = [reg.add_gate(args.name, args.alias, rule) for rule in args.rules]
            data: Any = [msgspec.to_builtins(g) for g in gates]
            text = "".join(f"{g.name}@{g.alias}: {g.rule}\n" for g in gates)
        elif action == "list":
            gates = reg.gates(args.name, args.alias)
            data = [msgspec.to_builtins(g) for g in gates]
            text = "".join(f"{g.name}@{g.alias}: {g.rule}\n" for g in gates) or "(no gates)\n"
        elif action == "rm":
            n = reg.remove_gate(args.name, args.alias, args.rule)
            data, text = {"removed": n}, f"removed {n} gate(s)\n"
        else:
            results = reg.check_gates(args.name, args.alias, args.version)
            data = [msgspec.to_builtins(r) for r in results]
            text = "".join(r.line() + "\n" for r in results) or "(no gates)\n"
            if args.json:
                print_json(data)
            else:
                sys.stdout.write(text)
            return 0 if all(r.passed for r in results) else 1
        if args.json:
            print_json(data)
        else:
            sys.stdout.write(text)
        return 0

    def _evals(self, reg: Registry, args: argparse.Namespace) -> int:
        name, version = _version_ref(args.ref)
        if args.evals_command == "list":
            recs = reg.evals(name, version)
            if args.json:
                print_json([msgspec.to_builtins(r) for r in recs])
                return 0
            for r in recs:
                shown = " ".join(f"{k}={v:.6g}" for k, v in r.metrics.items())
                sys.stdout.write(f"{r.eval_id} {r.recorded_at} {r.recorded_by}: {shown}\n")
            return 0
        if args.evals_command == "import":
            recs = [reg.import_eval(name, version, f, suite=args.suite) for f in args.files]
            if args.json:
                print_json([msgspec.to_builtins(r) for r in recs])
                return 0
            for r in recs:
                shown = " ".join(f"{k}={v:.6g}" for k, v in r.metrics.items())
                sys.stdout.write(f"{r.eval_id} for {name} version {version}: {shown}\n")
            return 0
        metrics: dict[str, float] = {}
        for text in args.metrics:
            key, value = parse_tag(text)
            try:
                metrics[key] = float(value)
            except ValueError:
                raise ConfigError(f"{text!r}: {value!r} is not a number") from None
        samples = _samples(args.samples) if args.samples else None
        rec = reg.record_eval(name, version, metrics, suite=args.suite, eval_id=args.eval_id,
                              samples=samples)  # fmt: skip
        if args.json:
            print_json(msgspec.to_builtins(rec))
        else:
            sys.stdout.write(f"recorded {rec.eval_id} for {name} version {version}\n")
        return 0

    # -- lineage, export, gc -------------------------------------------------

    def _link(self, reg: Registry, args: argparse.Namespace) -> int:
        edge = reg.link(args.ref, args.relation, args.target)
        if args.json:
            print_json(msgspec.to_builtins(edge))
        else:
            sys.stdout.write(f"{edge.src} {edge.kind} {edge.dst}\n")
        return 0

    def _lineage(self, reg: Registry, args: argparse.Namespace) -> int:
        if (args.ref is None) == (args.dataset is None):
            raise ConfigError(
                "lineage takes a version or --dataset X", hint="crucible models lineage dates/2"
            )
        if args.dataset is not None:
            direct = reg.trained_on(args.dataset)
            affected = reg.affected_by(args.dataset)
            if args.json:
                print_json({"dataset": args.dataset,
                            "trained_on": [_brief(v) for v in direct],
                            "affected": [_brief(v) for v in affected]})  # fmt: skip
                return 0
            sys.stdout.write(f"trained on {args.dataset}:\n")
            for v in direct:
                sys.stdout.write(f"  {_line(v)}\n")
            sys.stdout.write("affected if it is withdrawn (every version downstream):\n")
            for v in affected:
                sys.stdout.write(f"  {_line(v)}\n")
            return 0
        up = reg.ancestors(args.ref, depth=args.depth)
        down = reg.descendants(args.ref, depth=args.depth)
        if args.json:
            print_json({"id": up.id, "ancestors": [c.to_dict() for c in up.children],
                        "descendants": [c.to_dict() for c in down.children]})  # fmt: skip
            return 0
        sys.stdout.write(f"{up.id}\n")
        _tree(up, "ancestors")
        _tree(down, "descendants")
        return 0

    def _export(self, reg: Registry, args: argparse.Namespace) -> int:
        from crucible_registry.lineage import graph, write_graph

        g = graph(reg, args.refs)
        write_graph(g, args.format, args.output)
        if args.output is not None:
            sys.stderr.write(
                f"wrote {g.number_of_nodes()} nodes, {g.number_of_edges()} edges to {args.output}\n"
            )
        return 0

    def _gc(self, reg: Registry, args: argparse.Namespace) -> int:
        gone = reg.gc(dry_run=not args.yes)
        if args.json:
            print_json({"removed": args.yes, "versions": [_brief(v) for v in gone]})
            return 0
        word = "forgot" if args.yes else "would forget (run with --yes)"
        for v in gone:
            sys.stdout.write(f"{word} {v.name} version {v.version} (archived {v.archived_at})\n")
        if not gone:
            sys.stdout.write("nothing to collect (only archived versions holding no alias go)\n")
        return 0


def _link(text: str) -> tuple[str, str]:
    kind, sep, target = text.partition("=")
    if not sep or not target:
        raise ConfigError(f"--from {text!r}", hint="write RELATION=REF, e.g. dpo_from=dates/2")
    return kind.strip(), target.strip()


def _version_ref(text: str) -> tuple[str, int]:
    ref = parse_ref(text)
    if ref.version is None:
        raise ConfigError(f"{text!r}: give NAME/VERSION", hint="e.g. dates/3")
    return ref.name, ref.version


def _samples(path: Path) -> dict[str, list[float]]:
    try:
        data = msgspec.json.decode(path.read_bytes(), type=dict[str, list[float]])
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", hint="give a JSON file") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(
            f"{path}: not per-sample scores ({exc})", hint='write {"METRIC": [0.0, 1.0, ...]}'
        ) from None
    return data


def _brief(v: Any) -> dict[str, Any]:
    return {"name": v.name, "version": v.version, "run_id": v.run_id, "aliases": v.aliases,
            "dataset_uri": v.dataset_uri, "dataset_hash": v.dataset_hash}  # fmt: skip


def _line(v: Any) -> str:
    held = f" [{', '.join(v.aliases)}]" if v.aliases else ""
    return f"{v.name}/{v.version} (run {v.run_id}){held}"


def _tree(root: LineageNode, title: str) -> None:
    out = sys.stdout
    out.write(f"{title}:\n")
    if not root.children:
        out.write("  (none)\n")

    def walk(node: LineageNode, prefix: str) -> None:
        for i, child in enumerate(node.children):
            last = i == len(node.children) - 1
            label = f" ({child.label})" if child.label else ""
            seen = " [shown above]" if child.repeated else ""
            out.write(f"{prefix}{'└── ' if last else '├── '}{child.via} {child.id}{label}{seen}\n")
            walk(child, prefix + ("    " if last else "│   "))

    walk(root, "  ")

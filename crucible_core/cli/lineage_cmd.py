"""``crucible lineage show ID``: where a run or artifact came from, and what came of it.

ID is a job id or an artifact id (``sha256:...``); a unique prefix is
enough. The output is two trees: ancestors (what ID was made from) and
descendants (what was made from ID), each line naming the edge that links it
(``produces``, ``consumes``, ``derived_from``, ``depends_on``, ``triggers``,
and for registered model versions ``fine_tuned_from``, ``dpo_from``,
``rl_from``, ``distilled_from``, ``merged_from``, ``exported_from``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from crucible_core.cli.output import print_json

if TYPE_CHECKING:
    from crucible_core.records.lineage import LineageNode


def _label(node: LineageNode) -> str:
    text = node.id
    if node.type not in ("run",) or node.label:
        extra = ", ".join(x for x in (node.type, node.label) if x)
        text += f" ({extra})"
    if node.repeated:
        text += " [shown above]"
    return text


def _print_tree(root: LineageNode, title: str) -> None:
    out = sys.stdout
    out.write(f"{title}:\n")
    if not root.children:
        out.write("  (none)\n")
        return

    def walk(node: LineageNode, prefix: str) -> None:
        for i, child in enumerate(node.children):
            last = i == len(node.children) - 1
            out.write(f"{prefix}{'└── ' if last else '├── '}{child.via} {_label(child)}\n")
            walk(child, prefix + ("    " if last else "│   "))

    walk(root, "  ")


class _LineageCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="lineage_command", metavar="ACTION", required=True)
        p = sub.add_parser(
            "show",
            help="ancestors and descendants of a run or artifact, as trees",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("id", metavar="ID", help="job id or artifact id (a unique prefix works)")
        p.add_argument("--depth", type=int, metavar="N", help="at most N levels each way")
        p.add_argument("--json", action="store_true", help="print both trees as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from crucible_core.records.lineage import LineageRecorder

        with LineageRecorder() as rec:
            node_id = rec.resolve(args.id)
            node = rec.node(node_id)
            up = rec.ancestors(node_id, depth=args.depth)
            down = rec.descendants(node_id, depth=args.depth)
        if args.json:
            print_json(
                {
                    "id": node_id,
                    "type": node["type"],
                    "label": node["label"],
                    "ancestors": [c.to_dict() for c in up.children],
                    "descendants": [c.to_dict() for c in down.children],
                }
            )
            return 0
        sys.stdout.write(_label(up) + "\n")
        _print_tree(up, "ancestors")
        _print_tree(down, "descendants")
        return 0


command = _LineageCommand()

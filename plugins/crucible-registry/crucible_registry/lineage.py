"""Registry lineage: versions as nodes of the core lineage graph, queries, export.

Every version is the node ``models:/NAME/N`` (type ``model_version``) in the
core lineage recorder (``$CRUCIBLE_HOME/crucible.db``), linked when it is
registered:

- ``fine_tuned_from`` (or the relation given) its base model ``model:BASE``;
- ``derived_from`` its weights ``sha256:...`` and its run (job id), and the
  run ``consumes`` its dataset ``dataset:URI``;
- by each relation the user names (``dpo_from``, ``rl_from``,
  ``distilled_from``, ``merged_from``, ``exported_from``, ``fine_tuned_from``)
  another version, a model, a dataset or a run.

Queries: the ancestor / descendant trees (core's), "which versions were
trained on dataset X" (the registry's own record: the version's run consumed
X, or the version is linked to X directly) and "what is affected if dataset X
is withdrawn" (every version downstream of X, transitively, by one recursive
SQL query, with the aliases they hold). :func:`graph` builds a networkx
``DiGraph`` (imported here, lazily) for GraphML / DOT / JSON export.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir.lineage import Edge, EdgeKind
from crucible_registry.names import parse_ref

if TYPE_CHECKING:
    import networkx as nx

    from crucible_registry.registry import Registry, Version

__all__ = [
    "RELATIONS",
    "affected_by",
    "check_relation",
    "graph",
    "link",
    "node_id",
    "record_version",
    "target_id",
    "trained_on",
    "write_graph",
]

#: How one model came from another (the child is the edge's source).
RELATIONS: Final = (
    "fine_tuned_from",
    "dpo_from",
    "rl_from",
    "distilled_from",
    "merged_from",
    "exported_from",
)
VERSION_TYPE: Final = "model_version"
_PREFIXES: Final = ("model:", "dataset:", "sha256:", "checkpoint:")


def node_id(name: str, version: int) -> str:
    """The lineage node of a version: ``models:/NAME/N``."""
    return f"models:/{name}/{version}"


def check_relation(kind: str) -> EdgeKind:
    """``kind`` if it is one of :data:`RELATIONS`, else ConfigError."""
    if kind not in RELATIONS:
        raise ConfigError(f"{kind!r} is not a lineage relation", hint=f"use {', '.join(RELATIONS)}")
    return cast(EdgeKind, kind)


def target_id(reg: Registry, text: str) -> str:
    """The lineage node ``text`` names: a version reference (``dates/2``, ``dates@prod``,
    ``models:/dates/2``), ``model:...``, ``dataset:...``, ``sha256:...`` or a run's id."""
    if text.startswith(_PREFIXES):
        return text
    body = text.removeprefix("models:/")
    name = body.split("@", 1)[0].split("/", 1)[0]
    if reg.has_model(name) or text.startswith("models:/"):
        v = reg.resolve(parse_ref(text))
        return node_id(v.name, v.version)
    reg.lineage.node(text)  # a run (job id) lineage knows, or NotFound
    return text


def record_version(
    reg: Registry, v: Version, *, base_relation: str, links: Iterable[tuple[str, str]] = ()
) -> None:
    """Put version ``v`` and its edges into the core lineage graph (idempotent)."""
    rec = reg.lineage
    vid = node_id(v.name, v.version)
    rec.add_node(vid, type=VERSION_TYPE, label=f"{v.name} v{v.version}", name=v.name,
                 version=v.version, run=v.run_id, checkpoint=v.checkpoint,
                 config_hash=v.config_hash, dataset_hash=v.dataset_hash)  # fmt: skip
    base = {"revision": v.base_revision} if v.base_revision else {}
    edges = [
        Edge(src=vid, dst=f"model:{v.base_model}", kind=check_relation(base_relation),
             metadata=base),
        Edge(src=vid, dst=v.run_id, kind="derived_from"),
        *(Edge(src=vid, dst=f"sha256:{a.sha256}", kind="derived_from") for a in v.artifacts),
        *(Edge(src=vid, dst=target, kind=check_relation(kind)) for kind, target in links),
    ]  # fmt: skip
    if v.dataset_uri:
        hashed = {"hash": v.dataset_hash} if v.dataset_hash else {}
        edges.append(Edge(src=v.run_id, dst=f"dataset:{v.dataset_uri}", kind="consumes",
                          metadata=hashed))  # fmt: skip
    rec.add_edges(edges)  # one transaction (each write is fsynced); ends get their types


def link(reg: Registry, ref: str, relation: str, target: str) -> Edge:
    """Record that version ``ref`` was made from ``target`` by ``relation``."""
    v = reg.resolve(parse_ref(ref))
    edge = Edge(src=node_id(v.name, v.version), dst=target_id(reg, target),
                kind=check_relation(relation))  # fmt: skip
    if edge.dst == edge.src:
        raise ConfigError(f"{ref} cannot be made from itself")
    reg.lineage.add_edges([edge])
    return edge


def _versions_of(reg: Registry, ids: Iterable[str]) -> list[Version]:
    out: list[Version] = []
    for nid in ids:
        body = nid.removeprefix("models:/")
        name, _, number = body.rpartition("/")
        if name and number.isdigit() and reg.has_version(name, int(number)):
            out.append(reg.version(name, int(number)))
    return sorted(out, key=lambda v: (v.name, v.version))


def dataset_nodes(reg: Registry, dataset: str) -> list[str]:
    """The lineage nodes dataset ``dataset`` (an id ``dataset:URI``, a URI or a content hash)
    names; NotFound naming the known datasets if none."""
    found = set(reg.dataset_uris(dataset))
    for nid in (dataset, f"dataset:{dataset}"):
        try:
            reg.lineage.node(nid)
        except NotFound:
            continue
        found.add(nid)
    if not found:
        known = sorted({f"dataset:{u}" for u in reg.dataset_uris(None)})
        raise NotFound(
            f"no dataset {dataset!r} in the registry or lineage",
            hint=f"known datasets: {', '.join(known[:8]) or 'none'} (a content hash works too)",
        )
    return sorted(found)


def trained_on(reg: Registry, dataset: str) -> list[Version]:
    """The versions whose own training consumed ``dataset`` (or linked to it directly)."""
    nodes = dataset_nodes(reg, dataset)
    direct = reg.versions_trained_on([n.removeprefix("dataset:") for n in nodes], dataset)
    linked: list[str] = []
    for n in nodes:
        linked += [e.src for e in reg.lineage.edges(n) if e.dst == n]
    return sorted({(v.name, v.version): v for v in [*direct, *_versions_of(reg, linked)]}.values(),
                  key=lambda v: (v.name, v.version))  # fmt: skip


def affected_by(reg: Registry, dataset: str) -> list[Version]:
    """Every version downstream of ``dataset`` (transitively: a DPO of a version trained on
    it too), with the aliases each holds: what withdrawing the dataset touches."""
    ids: set[str] = set()
    for n in dataset_nodes(reg, dataset):
        ids |= {nid for nid, _, _ in reg.lineage.closure(n, up=False, types=[VERSION_TYPE])}
    return _versions_of(reg, ids)


def graph(reg: Registry, refs: Sequence[str] = ()) -> nx.DiGraph[str]:
    """The lineage around ``refs`` (every registered version if empty) as a networkx graph:
    each ref, its ancestors and descendants, and the edges between them (attribute ``kind``)."""
    import networkx as nx

    rec = reg.lineage
    roots = [target_id(reg, r) for r in refs] or [
        node_id(m.name, v) for m in reg.models() for v in m.versions
    ]
    info: dict[str, tuple[str, str | None]] = {}
    for root in roots:
        node = rec.node(root)
        info[root] = (node["type"], node["label"])
        for up in (True, False):
            info.update({nid: (t, label) for nid, t, label in rec.closure(root, up=up)})
    g: nx.DiGraph[str] = nx.DiGraph()
    for nid, (type_, label) in sorted(info.items()):
        attrs: dict[str, Any] = {"type": type_}
        if label:
            attrs["label"] = label
        g.add_node(nid, **attrs)
    for nid in info:
        for e in rec.edges(nid):
            if e.src == nid and e.dst in info:
                g.add_edge(e.src, e.dst, kind=e.kind)
    return g


def write_graph(g: nx.DiGraph[str], fmt: str, output: Path | None) -> None:
    """Write ``g`` as ``graphml`` (networkx), ``dot`` (networkx through pydot) or ``json``
    (networkx node-link data) to ``output`` (stdout if None)."""
    import networkx as nx

    if fmt == "graphml":
        if output is None:
            nx.write_graphml(g, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            nx.write_graphml(g, output)
        return
    if fmt == "dot":
        from networkx.drawing.nx_pydot import to_pydot

        # DOT ids with ':' or '/' must be quoted; json.dumps quotes the DOT way.
        quoted: nx.DiGraph[str] = nx.relabel_nodes(g, {n: json.dumps(n) for n in g})
        for _, data in quoted.nodes(data=True):
            data.update({k: json.dumps(str(v)) for k, v in data.items()})
        for _, _, data in quoted.edges(data=True):
            data.update({k: json.dumps(str(v)) for k, v in data.items()})
        text = str(to_pydot(quoted).to_string())
    elif fmt == "json":
        text = json.dumps(nx.node_link_data(g, edges="edges"), indent=2) + "\n"
    else:
        raise ConfigError(f"--format {fmt!r}", hint="graphml, dot or json")
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)

"""The lineage recorder: traces, spans, artifacts and provenance edges in SQLite.

Lineage lives in the runtime database (``$CRUCIBLE_HOME/crucible.db``)
beside the jobs, as a graph of *nodes* and *edges*. Node ids:

- a run is its job id (``job-...``), type ``run``;
- an artifact is ``sha256:<hex>`` (content-addressed: one node however many
  runs touch the same file), type ``artifact``;
- a model is ``model:<name>``, a dataset ``dataset:<uri or hash>``, a
  checkpoint known only by its URI ``checkpoint:<uri>``.

Edges are :class:`~crucible_core.ir.lineage.Edge` values, ``src --kind--> dst``:
a run ``consumes`` a dataset, ``produces`` a checkpoint; a checkpoint is
``derived_from`` its base model or parent checkpoint; a job ``depends_on``
another; a run ``triggers`` another; a registered model version was
``fine_tuned_from``, ``dpo_from``, ``rl_from``, ``distilled_from``,
``merged_from`` or ``exported_from`` another model; an evaluation
(``eval:<id>``, type ``evaluation``) was ``evaluated_on`` a dataset. For
ancestry each kind has a direction (:data:`PARENT_IS`): the parent of a
``produces``/``triggers`` edge is its ``src``; of ``consumes``/``derived_from``/
``depends_on``/``evaluated_on`` its ``dst``. So the ancestors of a checkpoint
are the run that produced it, what that run consumed, and the model it derives
from; its descendants are what was made from it.

Writes are idempotent (re-recording a trace, node or edge updates it), so a
run that is retried or resumed can record again without duplicates.

Supported surface: :class:`LineageRecorder`, :class:`LineageNode`,
:data:`PARENT_IS`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from crucible_core.errors import NotFound
from crucible_core.ir.lineage import Artifact, Edge, EdgeKind, Span, Trace
from crucible_core.queue._db import ConnectionPool, SyncMode
from crucible_core.records.paths import db_path as default_db_path

__all__ = ["PARENT_IS", "LineageNode", "LineageRecorder"]

#: For each edge kind, which end is the parent (the thing the other came from).
PARENT_IS: Final[dict[str, Literal["src", "dst"]]] = {
    "produces": "src",
    "triggers": "src",
    "consumes": "dst",
    "derived_from": "dst",
    "depends_on": "dst",
    "fine_tuned_from": "dst",
    "dpo_from": "dst",
    "rl_from": "dst",
    "distilled_from": "dst",
    "merged_from": "dst",
    "exported_from": "dst",
    "evaluated_on": "dst",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lineage_nodes (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    label TEXT,
    data BLOB
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lineage_edges (
    src TEXT NOT NULL,
    dst TEXT NOT NULL,
    kind TEXT NOT NULL,
    data BLOB,
    PRIMARY KEY (src, dst, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lineage_edges_dst ON lineage_edges(dst);
CREATE TABLE IF NOT EXISTS lineage_traces (
    trace_id TEXT PRIMARY KEY,
    parent_id TEXT,
    data BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lineage_spans (
    span_id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    data BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lineage_spans_trace ON lineage_spans(trace_id)
"""

_span_decoder = msgspec.json.Decoder(Span)
_trace_decoder = msgspec.json.Decoder(Trace)


@dataclass
class LineageNode:
    """One node of an ancestry or descendancy tree.

    ``via`` is the edge kind linking it to its parent in the tree (None at
    the root); ``repeated`` marks a node already shown elsewhere in the tree
    (its subtree is not expanded again).
    """

    id: str
    type: str
    label: str | None = None
    via: str | None = None
    repeated: bool = False
    children: list[LineageNode] = field(default_factory=list["LineageNode"])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready nested view."""
        return {
            "id": self.id,
            "type": self.type,
            "label": self.label,
            "via": self.via,
            "repeated": self.repeated,
            "children": [c.to_dict() for c in self.children],
        }


def _node_type(node_id: str) -> str:
    head = node_id.split(":", 1)[0]
    kinds = {
        "sha256": "artifact",
        "model": "model",
        "dataset": "dataset",
        "checkpoint": "checkpoint",
        "eval": "evaluation",
    }
    return kinds.get(head, "run")


class LineageRecorder:
    """Records and queries lineage in ``db_path`` (default ``$CRUCIBLE_HOME/crucible.db``)."""

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        busy_timeout_s: float = 30.0,
        sync: SyncMode | None = None,
    ) -> None:
        self.path = Path(db_path) if db_path is not None else default_db_path()
        self._db = ConnectionPool(
            self.path,
            schema=_SCHEMA,
            marker="lineage_spans",
            busy_timeout_s=busy_timeout_s,
            sync=sync,
        )

    def close(self) -> None:
        """Close the database connections."""
        self._db.close()

    def __enter__(self) -> LineageRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------

    def add_node(
        self, node_id: str, *, type: str | None = None, label: str | None = None, **data: Any
    ) -> None:
        """Create or update a node (type guessed from the id's prefix when omitted)."""
        with self._db.write() as conn:
            self._upsert_node(conn, node_id, type or _node_type(node_id), label, data)

    def add_edge(self, src: str, dst: str, kind: EdgeKind, **metadata: Any) -> None:
        """Record ``src --kind--> dst`` (nodes are created as needed)."""
        self.add_edges([Edge(src=src, dst=dst, kind=kind, metadata=metadata)])

    def add_edges(self, edges: Iterable[Edge]) -> None:
        """Record several edges in one transaction."""
        with self._db.write() as conn:
            for edge in edges:
                self._edge(conn, edge)

    def record_artifact(self, artifact: Artifact) -> None:
        """Record an artifact as a node of type ``artifact`` (its id is its ``artifact_id``)."""
        with self._db.write() as conn:
            self._artifact(conn, artifact)

    def record_span(self, span: Span) -> None:
        """Create or update one span (a stage's start, then its end)."""
        with self._db.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO lineage_spans (span_id, trace_id, data) VALUES (?, ?, ?)",
                (span.span_id, span.trace_id, msgspec.json.encode(span)),
            )

    def record_trace(
        self, trace: Trace, *, node_type: str = "run", label: str | None = None
    ) -> None:
        """Record a whole trace: the run node, its spans, artifacts and edges, atomically."""
        with self._db.write() as conn:
            head = msgspec.structs.replace(trace, spans=[], artifacts=[], edges=[])
            conn.execute(
                "INSERT OR REPLACE INTO lineage_traces (trace_id, parent_id, data) "
                "VALUES (?, ?, ?)",
                (trace.trace_id, trace.parent_id, msgspec.json.encode(head)),
            )
            self._upsert_node(conn, trace.trace_id, node_type, label, dict(trace.metadata))
            conn.executemany(
                "INSERT OR REPLACE INTO lineage_spans (span_id, trace_id, data) VALUES (?, ?, ?)",
                [(s.span_id, trace.trace_id, msgspec.json.encode(s)) for s in trace.spans],
            )
            for artifact in trace.artifacts:
                self._artifact(conn, artifact)
            for edge in trace.edges:
                self._edge(conn, edge)
            if trace.parent_id:
                self._edge(conn, Edge(src=trace.parent_id, dst=trace.trace_id, kind="triggers"))

    def _upsert_node(
        self,
        conn: sqlite3.Connection,
        node_id: str,
        type: str,
        label: str | None,
        data: Mapping[str, Any],
    ) -> None:
        conn.execute(
            "INSERT INTO lineage_nodes (id, type, label, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET type = excluded.type, "
            "label = coalesce(excluded.label, label), data = coalesce(excluded.data, data)",
            (node_id, type, label, msgspec.json.encode(dict(data)) if data else None),
        )

    def _artifact(self, conn: sqlite3.Connection, artifact: Artifact) -> None:
        name = artifact.metadata.get("name")
        self._upsert_node(
            conn,
            artifact.artifact_id,
            "artifact",
            str(name) if name else artifact.type,
            {"artifact": msgspec.to_builtins(artifact)},
        )

    def _edge(self, conn: sqlite3.Connection, edge: Edge) -> None:
        for end in (edge.src, edge.dst):
            conn.execute(
                "INSERT OR IGNORE INTO lineage_nodes (id, type) VALUES (?, ?)",
                (end, _node_type(end)),
            )
        conn.execute(
            "INSERT OR REPLACE INTO lineage_edges (src, dst, kind, data) VALUES (?, ?, ?, ?)",
            (
                edge.src,
                edge.dst,
                edge.kind,
                msgspec.json.encode(edge.metadata) if edge.metadata else None,
            ),
        )

    # -- reading --------------------------------------------------------------

    def node(self, node_id: str) -> dict[str, Any]:
        """A node's id, type, label and data; NotFound if lineage never saw it."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT id, type, label, data FROM lineage_nodes WHERE id = ?", (node_id,)
            ).fetchone()
        if row is None:
            raise NotFound(
                f"lineage has no record of {node_id!r}",
                hint="give a job id or an artifact id (sha256:...); `crucible jobs list` "
                "shows job ids",
            )
        return {
            "id": row[0],
            "type": row[1],
            "label": row[2],
            "data": msgspec.json.decode(row[3]) if row[3] else {},
        }

    def resolve(self, ref: str) -> str:
        """The node id ``ref`` names: exact, or a unique prefix (``sha256:ab12``, ``job-1``)."""
        with self._db.read() as conn:
            if conn.execute("SELECT 1 FROM lineage_nodes WHERE id = ?", (ref,)).fetchone():
                return ref
            rows = conn.execute(
                "SELECT id FROM lineage_nodes WHERE id >= ? AND id < ? ORDER BY id LIMIT 6",
                (ref, ref + "\U0010ffff"),
            ).fetchall()
        if len(rows) == 1:
            return str(rows[0][0])
        if not rows:
            self.node(ref)
        shown = ", ".join(str(r[0]) for r in rows[:5])
        raise NotFound(f"{ref!r} is ambiguous: it begins {shown}...", hint="give more characters")

    def edges(self, node_id: str) -> list[Edge]:
        """Every edge touching ``node_id``."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT src, dst, kind, data FROM lineage_edges WHERE src = ? "
                "UNION SELECT src, dst, kind, data FROM lineage_edges WHERE dst = ?",
                (node_id, node_id),
            ).fetchall()
        return [
            Edge(src=s, dst=d, kind=k, metadata=msgspec.json.decode(m) if m else {})
            for s, d, k, m in rows
        ]

    def _neighbours(
        self, conn: sqlite3.Connection, node_id: str, *, up: bool
    ) -> list[tuple[str, str]]:
        """(neighbour, edge kind) one step up (parents) or down (children)."""
        out: list[tuple[str, str]] = []
        for src, dst, kind in conn.execute(
            "SELECT src, dst, kind FROM lineage_edges WHERE src = ? "
            "UNION ALL SELECT src, dst, kind FROM lineage_edges WHERE dst = ?",
            (node_id, node_id),
        ):
            parent, child = (src, dst) if PARENT_IS.get(kind, "src") == "src" else (dst, src)
            if up and child == node_id and parent != node_id:
                out.append((parent, kind))
            elif not up and parent == node_id and child != node_id:
                out.append((child, kind))
        return sorted(set(out))

    def _tree(self, root: str, *, up: bool, depth: int | None) -> LineageNode:
        with self._db.read() as conn:
            labels: dict[str, tuple[str, str | None]] = {}

            def make(node_id: str, via: str | None, level: int, seen: set[str]) -> LineageNode:
                if node_id not in labels:
                    row = conn.execute(
                        "SELECT type, label FROM lineage_nodes WHERE id = ?", (node_id,)
                    ).fetchone()
                    labels[node_id] = (row[0], row[1]) if row else (_node_type(node_id), None)
                type_, label = labels[node_id]
                node = LineageNode(id=node_id, type=type_, label=label, via=via)
                if node_id in seen:
                    node.repeated = True
                    return node
                seen.add(node_id)
                if depth is None or level < depth:
                    for other, kind in self._neighbours(conn, node_id, up=up):
                        node.children.append(make(other, kind, level + 1, seen))
                return node

            self._exists(conn, root)
            return make(root, None, 0, set())

    def _exists(self, conn: sqlite3.Connection, node_id: str) -> None:
        if conn.execute("SELECT 1 FROM lineage_nodes WHERE id = ?", (node_id,)).fetchone() is None:
            self.node(node_id)

    def closure(
        self, node_id: str, *, up: bool, types: Iterable[str] | None = None
    ) -> list[tuple[str, str, str | None]]:
        """Every ancestor (``up``) or descendant of ``node_id`` as (id, type, label), by id.

        One recursive SQL query (each node visited once, so cycles end), for
        the flat questions trees are too slow for on big graphs ("every model
        trained on this dataset"). ``types`` keeps only nodes of those types.
        """
        from_src = sorted(k for k, end in PARENT_IS.items() if end == "dst")
        from_dst = sorted(k for k, end in PARENT_IS.items() if end == "src")
        if not up:
            from_src, from_dst = from_dst, from_src
        marks_s = ",".join("?" * len(from_src))
        marks_d = ",".join("?" * len(from_dst))
        # Going up from a node: a parent-is-dst edge leads from its src to its dst,
        # a parent-is-src edge from its dst to its src; going down, the other way.
        sql = (
            "WITH RECURSIVE walk(id) AS (SELECT ? "
            f"UNION SELECT e.dst FROM walk JOIN lineage_edges e ON e.src = walk.id "
            f"AND e.kind IN ({marks_s}) "
            f"UNION SELECT e.src FROM walk JOIN lineage_edges e ON e.dst = walk.id "
            f"AND e.kind IN ({marks_d})) "
            "SELECT w.id, n.type, n.label FROM walk w LEFT JOIN lineage_nodes n ON n.id = w.id "
            "WHERE w.id != ? ORDER BY w.id"
        )
        wanted = None if types is None else set(types)
        with self._db.read() as conn:
            self._exists(conn, node_id)
            rows = conn.execute(sql, (node_id, *from_src, *from_dst, node_id)).fetchall()
        out: list[tuple[str, str, str | None]] = []
        for nid, type_, label in rows:
            kind = str(type_) if type_ is not None else _node_type(str(nid))
            if wanted is None or kind in wanted:
                out.append((str(nid), kind, label))
        return out

    def ancestors(self, node_id: str, *, depth: int | None = None) -> LineageNode:
        """The tree of what ``node_id`` came from (parents as children of the tree)."""
        return self._tree(node_id, up=True, depth=depth)

    def descendants(self, node_id: str, *, depth: int | None = None) -> LineageNode:
        """The tree of what came from ``node_id``."""
        return self._tree(node_id, up=False, depth=depth)

    def get_trace(self, trace_id: str) -> Trace:
        """A recorded trace with its spans, artifacts (produced) and edges."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT data FROM lineage_traces WHERE trace_id = ?", (trace_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no trace {trace_id!r}", hint="traces are named by job id")
            spans = [
                _span_decoder.decode(d)
                for (d,) in conn.execute(
                    "SELECT data FROM lineage_spans WHERE trace_id = ? ORDER BY span_id",
                    (trace_id,),
                )
            ]
        trace = _trace_decoder.decode(row[0])
        edges = [e for e in self.edges(trace_id) if trace_id in (e.src, e.dst)]
        artifacts: list[Artifact] = []
        for edge in edges:
            if edge.kind == "produces" and edge.src == trace_id:
                data = self.node(edge.dst).get("data", {}).get("artifact")
                if data is not None:
                    artifacts.append(msgspec.convert(data, Artifact))
        spans.sort(key=lambda s: (s.start is None, s.start, s.span_id))
        return msgspec.structs.replace(trace, spans=spans, artifacts=artifacts, edges=edges)

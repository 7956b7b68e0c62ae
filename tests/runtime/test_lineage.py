"""The lineage recorder: traces, idempotent writes, ancestry and descendancy trees."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from crucible_core.errors import NotFound
from crucible_core.ir.lineage import Artifact, Edge, Span, Trace
from crucible_core.records.lineage import LineageRecorder

CKPT = "sha256:" + "c" * 64
DATA = "dataset:data/train.jsonl"


@pytest.fixture
def rec(tmp_path: Path) -> LineageRecorder:
    r = LineageRecorder(tmp_path / "crucible.db", sync="normal")
    yield r  # type: ignore[misc]
    r.close()


def record_training(rec: LineageRecorder) -> None:
    now = datetime.now(UTC)
    trace = Trace(
        trace_id="job-train",
        spans=[Span(span_id="job-train/loop", trace_id="job-train", name="loop", start=now)],
        artifacts=[Artifact(artifact_id=CKPT, type="checkpoint", uri="file:///c", sha256="c" * 64)],
        edges=[
            Edge(src="job-train", dst=DATA, kind="consumes"),
            Edge(src="job-train", dst=CKPT, kind="produces"),
            Edge(src=CKPT, dst="model:tiny", kind="derived_from"),
        ],
        metadata={"kind": "training_run"},
    )
    rec.record_trace(trace, label="train tiny")
    rec.add_edge("job-eval", CKPT, "consumes")
    rec.add_edge("job-eval", "job-train", "depends_on")


def test_ancestors_of_a_checkpoint(rec: LineageRecorder) -> None:
    record_training(rec)
    tree = rec.ancestors(CKPT)
    assert tree.type == "artifact"
    assert [(c.id, c.via) for c in tree.children] == [
        ("job-train", "produces"),
        ("model:tiny", "derived_from"),
    ]
    run = tree.children[0]
    assert run.label == "train tiny"
    assert [(c.id, c.via, c.type) for c in run.children] == [(DATA, "consumes", "dataset")]


def test_descendants_of_a_dataset(rec: LineageRecorder) -> None:
    record_training(rec)
    tree = rec.descendants(DATA)
    run = tree.children[0]
    assert run.id == "job-train"
    eval_run, ckpt = run.children
    assert (eval_run.id, eval_run.via, eval_run.repeated) == ("job-eval", "depends_on", False)
    assert (ckpt.id, ckpt.via) == (CKPT, "produces")
    (again,) = ckpt.children
    assert (again.id, again.via, again.repeated) == ("job-eval", "consumes", True)
    assert again.children == []
    as_json = tree.to_dict()
    assert as_json["children"][0]["id"] == "job-train"


def test_depth_limit_and_trace_roundtrip(rec: LineageRecorder) -> None:
    record_training(rec)
    assert rec.descendants(DATA, depth=1).children[0].children == []
    trace = rec.get_trace("job-train")
    assert [s.name for s in trace.spans] == ["loop"]
    assert [a.artifact_id for a in trace.artifacts] == [CKPT]
    assert {e.kind for e in trace.edges} >= {"consumes", "produces", "depends_on"}


def test_writes_are_idempotent(rec: LineageRecorder) -> None:
    record_training(rec)
    record_training(rec)
    assert len(rec.edges("job-train")) == 3
    assert len(rec.get_trace("job-train").spans) == 1


def test_resolve_prefix_and_unknown(rec: LineageRecorder) -> None:
    record_training(rec)
    assert rec.resolve("sha256:ccc") == CKPT
    assert rec.resolve("job-train") == "job-train"
    with pytest.raises(NotFound, match="ambiguous"):
        rec.resolve("job-")
    with pytest.raises(NotFound, match="no record"):
        rec.resolve("nothing")
    with pytest.raises(NotFound):
        rec.ancestors("nothing")
    with pytest.raises(NotFound):
        rec.get_trace("nothing")


def _tree_ids(node: object) -> set[str]:
    from crucible_core.records.lineage import LineageNode

    assert isinstance(node, LineageNode)
    out: set[str] = set()
    for child in node.children:
        out.add(child.id)
        out |= _tree_ids(child)
    return out


def test_closure_is_the_set_of_the_trees_nodes_and_ends_on_cycles(rec: LineageRecorder) -> None:
    record_training(rec)
    rec.add_edge("models:/tiny/2", CKPT, "derived_from")
    rec.add_edge("models:/tiny/3", "models:/tiny/2", "dpo_from")
    for node in (DATA, CKPT, "job-train", "models:/tiny/3"):
        for up in (True, False):
            tree = rec.ancestors(node) if up else rec.descendants(node)
            assert {n for n, _, _ in rec.closure(node, up=up)} == _tree_ids(tree)
    assert [n for n, _, _ in rec.closure(DATA, up=False)] == sorted(
        ["job-train", CKPT, "job-eval", "models:/tiny/2", "models:/tiny/3"]
    )
    assert [n for n, t, _ in rec.closure("models:/tiny/3", up=True, types=["model"])] == [
        "model:tiny"
    ]
    rec.add_edge("model:tiny", "models:/tiny/3", "merged_from")  # a cycle
    assert "models:/tiny/3" in {n for n, _, _ in rec.closure("models:/tiny/2", up=False)}
    with pytest.raises(NotFound):
        rec.closure("job-none", up=True)

"""Registry lineage: versions in the core lineage graph, dataset queries, export, SQL closure."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import pytest
from crucible_registry import Registry
from crucible_registry.lineage import graph, write_graph
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir import DatasetSpec
from crucible_core.records.lineage import LineageNode, LineageRecorder


def _ids(node: LineageNode) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for c in node.children:
        out.setdefault(c.id, c.via)
        out.update({k: v for k, v in _ids(c).items() if k not in out})
    return out


@pytest.fixture
def family(train: Callable[..., Path], registry: Registry, tmp_path: Path) -> Registry:
    """dates/1 (run-a on data-a), dates/2 (run-b on data-b), dates/3 dpo_from dates/1 (run-c
    on data-b), dates/4 merged_from dates/2 and dates/3 (run-c step 8)."""
    for name in ("a", "b"):
        (tmp_path / f"data-{name}.txt").write_text(
            "\n".join(f"{name} {i}: the dog ran to the park" for i in range(30))
        )
    train("run-a", dataset_spec=DatasetSpec(uri=str(tmp_path / "data-a.txt")))
    train("run-b", dataset_spec=DatasetSpec(uri=str(tmp_path / "data-b.txt")))
    train("run-c", dataset_spec=DatasetSpec(uri=str(tmp_path / "data-b.txt")))
    registry.register("run-a", name="dates", checkpoint="12")
    registry.register("run-b", name="dates", checkpoint="12")
    registry.register("run-c", name="dates", checkpoint="12", base_relation="dpo_from",
                      links=[("dpo_from", "dates/1")])  # fmt: skip
    registry.register("run-c", name="dates", checkpoint="8",
                      links=[("merged_from", "dates/2")])  # fmt: skip
    registry.link("dates/4", "merged_from", "dates/3")
    return registry


def test_a_version_is_linked_to_its_base_model_run_artifact_and_dataset(
    family: Registry, tmp_path: Path
) -> None:
    v1 = family.version("dates", 1)
    up = _ids(family.ancestors("dates/1"))
    assert up["model:toy"] == "fine_tuned_from"
    assert up["run-a"] == "derived_from"
    assert up[f"sha256:{v1.artifacts[0].sha256}"] == "derived_from"
    assert up[f"dataset:{tmp_path / 'data-a.txt'}"] == "consumes"
    up3 = _ids(family.ancestors("models:/dates/3"))
    assert up3["models:/dates/1"] == "dpo_from"
    assert up3["model:toy"] in ("dpo_from", "fine_tuned_from")
    down1 = _ids(family.descendants("dates/1"))
    assert set(down1) == {"models:/dates/3", "models:/dates/4"}
    assert family.lineage.node("models:/dates/1")["type"] == "model_version"


def test_which_versions_were_trained_on_a_dataset_and_what_withdrawing_it_touches(
    family: Registry, tmp_path: Path
) -> None:
    family.set_alias("dates", "production", 4)
    data_a = str(tmp_path / "data-a.txt")
    direct = [(v.name, v.version) for v in family.trained_on(data_a)]
    assert direct == [("dates", 1)]
    affected = family.affected_by(f"dataset:{data_a}")
    assert [(v.version, v.aliases) for v in affected] == [(1, []), (3, []), (4, ["production"])]
    by_hash = family.trained_on(family.version("dates", 2).dataset_hash or "")
    assert [v.version for v in by_hash] == [2, 3, 4]
    with pytest.raises(NotFound, match="no dataset") as info:
        family.trained_on("data-c")
    assert "data-a.txt" in (info.value.hint or "")


def test_links_are_checked(family: Registry) -> None:
    with pytest.raises(ConfigError, match="not a lineage relation"):
        family.link("dates/1", "copied_from", "dates/2")
    with pytest.raises(ConfigError, match="made from itself"):
        family.link("dates/1", "merged_from", "dates/1")
    with pytest.raises(NotFound, match="no version 9"):
        family.link("dates/1", "merged_from", "dates/9")
    with pytest.raises(NotFound, match="lineage has no record"):
        family.link("dates/1", "merged_from", "no-such-run")
    edge = family.link("dates/2", "distilled_from", "model:teacher-70b")
    assert (edge.src, edge.kind, edge.dst) == (
        "models:/dates/2",
        "distilled_from",
        "model:teacher-70b",
    )


def test_export_as_graphml_dot_and_json_round_trips(family: Registry, tmp_path: Path) -> None:
    g = graph(family, ["dates/4"])
    assert g.edges["models:/dates/4", "models:/dates/3"]["kind"] == "merged_from"
    assert g.nodes["models:/dates/4"]["type"] == "model_version"
    assert nx.is_directed_acyclic_graph(g)
    write_graph(g, "graphml", tmp_path / "g.graphml")
    back = nx.read_graphml(tmp_path / "g.graphml")
    assert set(back.edges) == set(g.edges)
    assert back.nodes["models:/dates/1"]["label"] == "dates v1"
    write_graph(g, "dot", tmp_path / "g.dot")
    # (pydot's own parser warns under pytest -W error: read the edge lines directly)
    text = (tmp_path / "g.dot").read_text()
    assert text.startswith("strict digraph")
    dot_edges = {(json.loads(a), json.loads(b))
                 for a, b in re.findall(r'^("[^"]*") -> ("[^"]*")', text, re.M)}  # fmt: skip
    assert dot_edges == set(g.edges)
    assert '"models:/dates/4" -> "models:/dates/3" [kind="merged_from"]' in text
    write_graph(g, "json", tmp_path / "g.json")
    data = json.loads((tmp_path / "g.json").read_text())
    assert set(nx.node_link_graph(data, edges="edges").edges) == set(g.edges)
    everything = graph(family)
    assert {f"models:/dates/{v}" for v in (1, 2, 3, 4)} <= set(everything.nodes)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=25).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.tuples(
                    st.integers(0, n - 1),
                    st.integers(0, n - 1),
                    st.sampled_from(["produces", "consumes", "derived_from", "dpo_from"]),
                ),
                max_size=60,
            ),
        )
    )
)
def test_sql_closure_equals_networkx_on_any_graph(
    data: tuple[int, list[tuple[int, int, str]]],
) -> None:
    """The recursive query (core) against networkx on the same graph, cycles included."""
    import tempfile

    from crucible_core.ir.lineage import Edge
    from crucible_core.records.lineage import PARENT_IS

    n, raw = data
    with (
        tempfile.TemporaryDirectory() as d,
        LineageRecorder(Path(d) / "l.db", sync="normal") as rec,
    ):
        edges = [Edge(src=f"n{a}", dst=f"n{b}", kind=k) for a, b, k in raw if a != b]  # type: ignore[arg-type]
        rec.add_edges(edges)
        for i in range(n):
            rec.add_node(f"n{i}", type="run")
        g: nx.DiGraph[str] = nx.DiGraph()  # parent -> child
        g.add_nodes_from(f"n{i}" for i in range(n))
        for e in edges:
            parent, child = (e.src, e.dst) if PARENT_IS[e.kind] == "src" else (e.dst, e.src)
            g.add_edge(parent, child)
        for i in range(n):
            node = f"n{i}"
            assert {x for x, _, _ in rec.closure(node, up=False)} == nx.descendants(g, node)
            assert {x for x, _, _ in rec.closure(node, up=True)} == nx.ancestors(g, node)

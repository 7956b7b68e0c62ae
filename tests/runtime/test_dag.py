"""The DAG helper: orders respect every dependency; cycles are found and shown closed."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.pipeline.dag import find_cycle, topological_order


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], dict[str, list[str]]]:
    """Random DAGs: node i may depend only on nodes before it in a hidden order."""
    n = draw(st.integers(0, 25))
    hidden = [f"n{i}" for i in range(n)]
    deps = {
        node: draw(st.lists(st.sampled_from(hidden[:i]), unique=True)) if i else []
        for i, node in enumerate(hidden)
    }
    shown = draw(st.permutations(hidden))
    return list(shown), deps


@given(dags())
def test_order_is_a_permutation_that_respects_every_dependency(
    dag: tuple[list[str], dict[str, list[str]]],
) -> None:
    nodes, deps = dag
    order = topological_order(nodes, deps)
    assert sorted(order) == sorted(nodes)
    position = {n: i for i, n in enumerate(order)}
    for node, ds in deps.items():
        for d in ds:
            assert position[d] < position[node]
    assert find_cycle(deps) is None


@given(dags(), st.data())
def test_an_added_back_edge_is_found_as_a_closed_path(
    dag: tuple[list[str], dict[str, list[str]]], data: st.DataObject
) -> None:
    nodes, deps = dag
    chained = [n for n in nodes if deps[n]]
    if not chained:
        return
    node = data.draw(st.sampled_from(chained))
    dep = data.draw(st.sampled_from(deps[node]))
    deps[dep] = [*deps[dep], node]  # dep now also depends on node: a cycle
    cycle = find_cycle(deps)
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    for a, b in itertools.pairwise(cycle):
        assert b in deps[a]  # each node depends on the next


def test_ties_keep_the_given_order() -> None:
    assert topological_order(["c", "a", "b"], {"b": ["c"]}) == ["c", "a", "b"]
    assert topological_order(["b", "a"], {}) == ["b", "a"]
    with pytest.raises(ValueError, match="cycle"):
        topological_order(["a", "b"], {"a": ["b"], "b": ["a"]})

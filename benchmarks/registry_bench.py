"""crucible-registry: register and resolve with 10,000 versions; lineage queries vs networkx.

Targets (issue 18): resolving ``models:/NAME@ALIAS`` <= 2 ms with 10,000
versions; a lineage query over 10,000 nodes compared with networkx on the same
graph in memory.

- **Registry size.** One name gets ``--versions`` versions (default 10,000).
  All but the measured ones are seeded by SQL straight into ``registry.db``
  (rows shaped exactly as ``register`` writes them; registering 10,000 real
  checkpoints would take minutes and measure the disk). Every figure is also
  measured on a registry holding only the ``--registers`` registered
  versions, in the same run, so the ratio shows what the size costs.
- **register**: real ``Registry.register`` calls, each of a fresh run
  directory (a 256 KiB weights file and its manifest written by core's
  manifest helpers): rehash, copy into the artifact store, pin, one
  transaction, lineage nodes and edges. Median and p90 of ``--registers``.
- **resolve**: ``Registry.resolve("NAME@production")`` on an open registry
  (the lookup), and ``crucible_registry.uri.resolve("models:/NAME@production")``
  (what ``crucible sample models:/...`` calls: opens the database, looks up,
  rehashes the 256 KiB checkpoint). Median of ``--resolves`` calls.
- **lineage**: a random DAG of ``--nodes`` nodes (each node made from one or
  two earlier ones, by ``fine_tuned_from`` / ``merged_from`` /
  ``derived_from``) recorded in the core lineage database. Every descendant of
  the root and every ancestor of the newest node: the recursive SQL query
  (``LineageRecorder.closure``), the recorder's tree walk, and networkx
  (``nx.descendants`` / ``nx.ancestors``) on a ``DiGraph`` already in memory.
  The answers are checked equal.

Run: .venv/bin/python -m benchmarks.registry_bench [--versions 10000] [--nodes 10000]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TARGET_RESOLVE_MS = 2.0


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9)] * 1000


def _time(fn: Callable[[], object], n: int) -> list[float]:
    out: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _make_run(home: Path, run_id: str, seed: int) -> Path:
    """A finished run directory as core writes one: final weights listed with their sha256."""
    from crucible_core.ir.lineage import Artifact
    from crucible_core.records.artifacts import digest_path
    from crucible_core.records.manifest import RunRecord

    run = home / "runs" / run_id
    weights = run / "checkpoints" / "final" / "sampler" / "weights.bin"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(random.Random(seed).randbytes(256 * 1024))
    sha, size = digest_path(weights)
    record = RunRecord(run)
    record.update(
        job_config_digest=f"{seed:064x}",
        model={"name": "toy", "revision": "r1"},
        backend={"name": "toyfile"},
        dataset={"uri": "data/train.jsonl", "hash": "sha256:" + "d" * 64},
        training={"final_loss": 1.0 / (seed + 1), "steps": 10},
        sampler_checkpoint={"uri": weights.resolve().as_uri(), "kind": "sampler"},
    )
    record.record_artifact(
        Artifact(artifact_id=f"sha256:{sha}", type="model", uri=weights.resolve().as_uri(),
                 size_bytes=size, sha256=sha, metadata={"name": "final"}),
        path=weights,
    )  # fmt: skip
    return run


def _seed(db: Path, name: str, count: int) -> None:
    """``count`` versions of ``name`` straight into the registry's tables."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT OR IGNORE INTO models (name, created_at, last_version) VALUES (?, 'now', 0)",
            (name,),
        )
        rows = [
            (name, v, f"{v:064x}", f"seed-{v}", "/nowhere", "final", None, "toyfile", "toy",
             "r1", f"{v:064x}", None, "h", '{"final_loss": 1.0}', "now", "bench", None)
            for v in range(1, count + 1)
        ]  # fmt: skip
        conn.executemany(
            "INSERT INTO versions (name, version, identity, run_id, run_dir, checkpoint, step,"
            " backend, base_model, base_revision, config_hash, dataset_hash, manifest_hash,"
            " metrics, created_at, created_by, dataset_uri)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO artifacts (name, version, role, sha256, size_bytes, store_uri, run_path)"
            " VALUES (?, ?, 'weights', ?, 1, 'file:///nowhere', '/nowhere')",
            [(name, v, f"{v:064x}") for v in range(1, count + 1)],
        )
        conn.execute("UPDATE models SET last_version = ? WHERE name = ?", (count, name))
    conn.close()


def bench_registry(versions: int, registers: int, resolves: int) -> dict[int, dict[str, float]]:
    """Two registries side by side (``registers`` and ``versions`` versions); every
    measurement alternates between them, so load on the shared machine hits both alike."""
    from crucible_registry import Registry
    from crucible_registry.uri import resolve as uri_resolve

    from crucible_core.records.artifacts import LocalArtifactStore

    sizes = (registers, versions)
    times: dict[int, dict[str, list[float]]] = {n: {"register": [], "resolve": [], "uri": []}
                                                for n in sizes}  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        homes = {n: Path(d) / f"home-{n}" for n in sizes}
        regs: dict[int, Registry] = {}
        runs: dict[int, list[Path]] = {}
        for n, home in homes.items():
            os.environ["CRUCIBLE_HOME"] = str(home)  # pins and run lookup follow it
            regs[n] = Registry(home / "registry.db", store=LocalArtifactStore(home / "artifacts"),
                               lineage_db=home / "crucible.db")  # fmt: skip
            _seed(regs[n].path, "bench", n - registers)
            runs[n] = [_make_run(home, f"run-{i}", i) for i in range(registers)]

        def each(fn: Callable[[int], object], key: str, count: int) -> None:
            for i in range(count):
                for n in sizes if i % 2 else sizes[::-1]:
                    os.environ["CRUCIBLE_HOME"] = str(homes[n])
                    start = time.perf_counter()
                    fn(n)
                    times[n][key].append(time.perf_counter() - start)

        counter = dict.fromkeys(sizes, 0)

        def register(n: int) -> None:
            run = runs[n][counter[n]]
            counter[n] += 1
            regs[n].register(str(run), name="bench")

        each(register, "register", registers)
        for n in sizes:
            assert regs[n].resolve("bench/latest").version == n
            regs[n].set_alias("bench", "production", n - 1)
            regs[n].set_alias("bench", "production", n)
        each(lambda n: regs[n].resolve("bench@production"), "resolve", resolves)
        each(lambda n: uri_resolve("models:/bench@production"), "uri", resolves // 4)
        for reg in regs.values():
            reg.close()
    results: dict[int, dict[str, float]] = {}
    for n in sizes:
        results[n] = {}
        for key, samples in times[n].items():
            results[n][key], results[n][key + "_p90"] = _ms(samples)
    return results


def bench_lineage(nodes: int, rounds: int) -> dict[str, float]:
    import networkx as nx

    from crucible_core.ir.lineage import Edge, EdgeKind
    from crucible_core.records.lineage import PARENT_IS, LineageRecorder

    rnd = random.Random(18)
    ids = ["dataset:root"] + [f"models:/m/{i}" for i in range(1, nodes)]
    kinds: list[EdgeKind] = ["fine_tuned_from", "merged_from", "derived_from"]
    edges: list[Edge] = []
    for i in range(1, nodes):
        for parent in {rnd.randrange(i) for _ in range(rnd.choice((1, 1, 2)))}:
            edges.append(Edge(src=ids[i], dst=ids[parent], kind=rnd.choice(kinds)))
    g: nx.DiGraph[str] = nx.DiGraph()  # parent -> child, in memory
    g.add_nodes_from(ids)
    for e in edges:
        assert PARENT_IS[e.kind] == "dst"
        g.add_edge(e.dst, e.src)
    out: dict[str, float] = {"edges": float(len(edges))}
    with tempfile.TemporaryDirectory() as d, LineageRecorder(Path(d) / "l.db") as rec:
        rec.add_edges(edges)
        root, leaf = ids[0], ids[-1]
        sql_down = {n for n, _, _ in rec.closure(root, up=False)}
        assert sql_down == nx.descendants(g, root)
        assert {n for n, _, _ in rec.closure(leaf, up=True)} == nx.ancestors(g, leaf)
        out["reached"] = float(len(sql_down))
        for label, fn in (
            ("sql_down", lambda: rec.closure(root, up=False)),
            ("nx_down", lambda: nx.descendants(g, root)),
            ("tree_down", lambda: rec.descendants(root)),
            ("sql_up", lambda: rec.closure(leaf, up=True)),
            ("nx_up", lambda: nx.ancestors(g, leaf)),
        ):
            out[label] = min(_time(fn, rounds)) * 1000
        out["nx_load"] = min(_time(lambda: _load_graph(rec), rounds)) * 1000
    return out


def _load_graph(rec: object) -> object:
    """networkx needs the graph in memory first: read every edge from the same database."""
    import networkx as nx

    from crucible_core.records.lineage import LineageRecorder

    assert isinstance(rec, LineageRecorder)
    conn = sqlite3.connect(rec.path)
    g: nx.DiGraph[str] = nx.DiGraph()
    g.add_edges_from((d, s) for s, d, _ in conn.execute("SELECT src, dst, kind FROM lineage_edges"))
    conn.close()
    return g


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--registers", type=int, default=30)
    parser.add_argument("--resolves", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    reg = bench_registry(args.versions, args.registers, args.resolves)
    small, big = reg[args.registers], reg[args.versions]
    print(f"registry: {args.versions} versions of one name vs {args.registers} "
          "(median, p90 in brackets)")  # fmt: skip
    for key, what in (
        ("register", "register (rehash 256 KiB, store, pin, SQL, lineage)"),
        ("resolve", "Registry.resolve('bench@production')"),
        ("uri", "uri.resolve('models:/bench@production') (open + lookup + rehash)"),
    ):
        print(f"  {what:<66} {big[key]:8.3f} ms [{big[key + '_p90']:.3f}]"
              f"  vs {small[key]:.3f} ms  ({big[key] / small[key]:.2f}x)")  # fmt: skip
    verdict = "met" if big["resolve"] <= TARGET_RESOLVE_MS else "NOT met"
    print(f"  resolve target <= {TARGET_RESOLVE_MS} ms: {verdict} "
          f"({big['resolve'] / TARGET_RESOLVE_MS:.3f} of the target)")  # fmt: skip

    lin = bench_lineage(args.nodes, args.rounds)
    print(f"lineage: {args.nodes} nodes, {int(lin['edges'])} edges; "
          f"the root reaches {int(lin['reached'])} (best of {args.rounds})")  # fmt: skip
    print(f"  descendants of the root: SQL closure {lin['sql_down']:.2f} ms, "
          f"networkx in memory {lin['nx_down']:.2f} ms "
          f"(SQL / networkx {lin['sql_down'] / lin['nx_down']:.1f}x), "
          f"recorder tree walk {lin['tree_down']:.1f} ms "
          f"({lin['tree_down'] / lin['sql_down']:.1f}x the SQL)")  # fmt: skip
    print(
        f"  ancestors of the newest: SQL closure {lin['sql_up']:.3f} ms, "
        f"networkx {lin['nx_up']:.3f} ms (SQL / networkx {lin['sql_up'] / lin['nx_up']:.1f}x)"
    )
    print(
        f"  loading the graph into networkx first: {lin['nx_load']:.1f} ms "
        f"(SQL closure + load would be networkx's real cost: "
        f"{(lin['nx_load'] + lin['nx_down']) / lin['sql_down']:.1f}x the SQL)"
    )


if __name__ == "__main__":
    main()

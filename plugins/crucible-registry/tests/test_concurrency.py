"""Real processes racing to move one alias: exactly one wins each round, history stays a chain.

Also two processes registering the same checkpoint at once get the same version.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from crucible_registry import Registry

from crucible_core.ir import CheckpointPolicy

WORKERS = 4
ROUNDS = 50
HERE = Path(__file__).parent


def _env(home: Path) -> dict[str, str]:
    root = HERE.parents[2]  # the repository (tests.toy_backend is not needed by the workers)
    return {**os.environ, "CRUCIBLE_HOME": str(home), "PYTHONPATH": str(root)}


def test_exactly_one_of_several_processes_moves_the_alias_each_round(
    train: Callable[..., Path], registry: Registry, home: Path, tmp_path: Path
) -> None:
    train("run-a", checkpoint_policy=CheckpointPolicy(save_every=4, strategy="all"))
    for step in ("4", "8", "12"):
        registry.register("run-a", name="bigram", checkpoint=step)
    registry.set_alias("bigram", "production", 1)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "race_worker.py"),
                str(w),
                str(WORKERS),
                str(ROUNDS),
                "3",
                str(barrier),
            ],
            env=_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WORKERS)
    ]
    results: list[dict[str, object]] = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        results.extend(json.loads(line) for line in out.splitlines())
    assert len(results) == WORKERS * ROUNDS
    for r in range(ROUNDS):
        outcomes = [x["outcome"] for x in results if x["round"] == r]
        assert sorted(outcomes) == ["conflict"] * (WORKERS - 1) + ["won"], (r, outcomes)
    history = registry.history("bigram", "production")
    assert len(history) == 1 + ROUNDS  # the initial set, then one move per round
    assert all(b.previous == a.version for a, b in itertools.pairwise(history))
    assert all(b.seq > a.seq for a, b in itertools.pairwise(history))
    winners = sorted((x["round"], x["from"], x["to"]) for x in results if x["outcome"] == "won")
    assert [(e.previous, e.version) for e in history[1:]] == [(f, t) for _, f, t in winners]
    assert registry.resolve("bigram@production").version == history[-1].version


def test_concurrent_registrations_of_one_checkpoint_give_one_version(
    train: Callable[..., Path], home: Path
) -> None:
    train("run-a")
    code = (
        "from crucible_registry import Registry\n"
        "with Registry() as r: print(r.register('run-a', name='bigram', checkpoint='12').version)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    versions = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        versions.append(int(out.strip()))
    assert versions == [1, 1, 1, 1]
    with Registry() as reg:
        assert reg.model("bigram").versions == [1]


def test_gates_are_checked_against_the_holder_a_racing_move_replaces(
    three: Registry, home: Path, tmp_path: Path
) -> None:
    """Racing moves to v2 and v3 under "loss <= holder's loss": whatever the order, v3 ends
    up holding the alias, and every unforced move in the history passed its gate against
    the version it replaced."""
    for version, loss in ((1, 3.0), (2, 2.0), (3, 1.0)):
        three.record_eval("bigram", version, {"loss": loss}, suite="h")
    three.set_alias("bigram", "production", 1)
    three.add_gate("bigram", "production", "eval.h.loss <= holder.eval.h.loss")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    rounds = 20
    script = str(HERE / "gated_race_worker.py")
    env = {**_env(home), "PYTHONPATH": f"{HERE}{os.pathsep}{_env(home)['PYTHONPATH']}"}
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(w), str(WORKERS), str(rounds), str(barrier)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WORKERS)
    ]
    results: list[dict[str, object]] = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        results.extend(json.loads(line) for line in out.splitlines())
    history = three.history("bigram", "production")
    assert all(b.previous == a.version for a, b in itertools.pairwise(history))
    for e in history[1:]:
        if e.forced:
            assert e.version == 1  # the resets
        else:
            assert e.evidence
            assert all(r.passed for r in e.evidence)
            assert e.evidence[0].observed[0].holder_value == {1: 3.0, 2: 2.0, 3: 1.0}[e.previous]
    # Per round: the moves between two resets end at v3.
    ends = [a.version for a, b in itertools.pairwise(history) if b.forced]
    assert ends == [3] * rounds
    assert len([e for e in history if e.forced]) == rounds
    for r in range(rounds):
        won = sorted(x["to"] for x in results if x["round"] == r and x["outcome"] == "won")
        assert 3 in won
        assert won in ([3], [2, 3]), (r, won)
    assert three.resolve("bigram@production").version == 1  # the last reset

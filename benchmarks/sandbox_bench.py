"""What pass@k's sandbox costs per program: plain ``python -I`` vs ``run_program`` with the
audit hook alone vs with the network namespace too.

Each arm runs the same trivial program (a HumanEval-sized check that passes) ``--n`` times
one after another; arms alternate per round so load drift on a shared machine hits all
alike; the best round of each is reported in ms per program.
Run: .venv/bin/python -m benchmarks.sandbox_bench [--n 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PROGRAM = (
    "def add(a, b):\n    return a + b\n\n"
    "def check(candidate):\n    assert candidate(2, 3) == 5\n\ncheck(add)\n"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from crucible_datasets.execution import network_isolation, run_program

    layers = network_isolation()

    def plain() -> None:
        subprocess.run([sys.executable, "-I", "-c", PROGRAM], check=True, timeout=30)

    def hook_only() -> None:
        assert run_program(PROGRAM, netns=False).passed

    def with_netns() -> None:
        assert run_program(PROGRAM).passed

    arms = {"plain python -I": plain, "run_program, audit hook": hook_only}
    if "netns" in layers:
        arms["run_program, netns + audit hook"] = with_netns
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, fn in arms.items():
            start = time.perf_counter()
            for _ in range(args.n):
                fn()
            per = (time.perf_counter() - start) / args.n * 1000
            best[name] = min(best.get(name, per), per)
    print(
        json.dumps(
            {"layers": layers, "ms_per_program": {k: round(v, 1) for k, v in best.items()}},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

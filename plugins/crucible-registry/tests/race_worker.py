"""One racing process (run as a script by test_concurrency.py).

``race_worker.py WORKER WORKERS ROUNDS VERSIONS BARRIER_DIR``: in each round,
read who holds ``bigram@production``, wait until every worker has read it (a
file barrier), then try to move the alias to another version, expecting the
holder it read. Prints one JSON line per round: the round, the outcome
("won" / "conflict") and the move it tried.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from crucible_registry import Registry

from crucible_core.errors import Conflict


def barrier(folder: Path, name: str, me: int, workers: int) -> None:
    (folder / f"{name}.{me}").touch()
    deadline = time.monotonic() + 60
    while len(list(folder.glob(f"{name}.*"))) < workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"worker {me}: barrier {name} timed out")
        time.sleep(0.001)


def main() -> None:
    me, workers, rounds, versions = (int(a) for a in sys.argv[1:5])
    folder = Path(sys.argv[5])
    with Registry() as reg:
        for r in range(rounds):
            held = reg.resolve("bigram@production").version
            target = [v for v in range(1, versions + 1) if v != held][(me + r) % (versions - 1)]
            barrier(folder, f"read-{r}", me, workers)
            try:
                reg.set_alias("bigram", "production", target, expected=held, actor=f"w{me}")
                outcome = "won"
            except Conflict:
                outcome = "conflict"
            print(json.dumps({"round": r, "outcome": outcome, "from": held, "to": target}))
            sys.stdout.flush()
            barrier(folder, f"done-{r}", me, workers)


if __name__ == "__main__":
    main()

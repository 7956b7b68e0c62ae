"""One process racing on a gated alias (run as a script by test_concurrency.py).

``gated_race_worker.py WORKER WORKERS ROUNDS BARRIER_DIR``: ``bigram@production``
is gated by ``eval.h.loss <= holder.eval.h.loss`` (losses: v1 3.0, v2 2.0,
v3 1.0). Each round every worker, at once, moves it from v1 to v2 (even
workers) or v3 (odd), expecting nothing in particular; then worker 0 puts v1
back (forced) for the next round. Prints one JSON line per round: the
outcome ("won", "gate" or "conflict") and the target.
"""

from __future__ import annotations

import json
import sys

from crucible_registry import GateFailed, Registry
from race_worker import barrier

from crucible_core.errors import Conflict


def main() -> None:
    me, workers, rounds = (int(a) for a in sys.argv[1:4])
    folder = sys.argv[4]
    from pathlib import Path

    where = Path(folder)
    target = 2 if me % 2 == 0 else 3
    with Registry() as reg:
        for r in range(rounds):
            barrier(where, f"go-{r}", me, workers)
            try:
                reg.set_alias("bigram", "production", target, actor=f"w{me}", reason=f"r{r}")
                outcome = "won"
            except GateFailed:
                outcome = "gate"
            except Conflict:
                outcome = "conflict"  # it already holds the target
            print(json.dumps({"round": r, "outcome": outcome, "to": target}))
            sys.stdout.flush()
            barrier(where, f"done-{r}", me, workers)
            if me == 0:
                reg.set_alias("bigram", "production", 1, force=True, reason=f"reset {r}")
            barrier(where, f"reset-{r}", me, workers)


if __name__ == "__main__":
    main()

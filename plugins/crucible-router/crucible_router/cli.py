"""``crucible backends status [--json] [--file PATH]``: the breakers' last recorded states.

Reads the state file routers write when ``state_file`` is on (default
``$CRUCIBLE_HOME/router.db``): breaker rows, and the calls in flight per limit
key of members with ``max_in_flight`` (live processes only). Exit 0 with an
explanatory line when nothing was recorded yet.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from crucible_router.state import BreakerStateFile

__all__ = ["BackendsCommand"]


class BackendsCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Show each routed backend's circuit breaker as last recorded by a router with "
            "state_file on."
        )
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        status = sub.add_parser("status", help="breaker state per backend")
        status.add_argument("--json", action="store_true", help="print the rows as JSON")
        status.add_argument(
            "--file", help="the state file (default: $CRUCIBLE_HOME/router.db)", default=None
        )

    def run(self, args: argparse.Namespace) -> int:
        from crucible_router.limits import in_flight_by_key

        store = BreakerStateFile(args.file)
        rows = store.read()
        in_flight = in_flight_by_key(store.path)
        now = time.time()
        for row in rows:
            retry_at = row.get("retry_at")
            row["retry_in_s"] = max(0.0, retry_at - now) if retry_at is not None else 0.0
        if args.json:
            import json

            out = {"file": str(store.path), "backends": rows, "in_flight": in_flight}
            sys.stdout.write(json.dumps(out) + "\n")
            return 0
        if in_flight:
            sys.stdout.write(
                "in flight (max_in_flight limits): "
                + ", ".join(f"{k} {n}" for k, n in sorted(in_flight.items()))
                + "\n"
            )
        if not rows:
            sys.stdout.write(
                f"no breaker state recorded in {store.path} (routers write it with state_file on)\n"
            )
            return 0
        sys.stdout.write(_table(rows))
        return 0


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'backend':<20} {'state':<10} {'failures':>8} {'opens':>5}  detail"]
    for r in rows:
        detail = ""
        if r["state"] == "open":
            wait = r["retry_in_s"]
            detail = f"probe in {wait:.0f} s" if wait > 0 else "probe due"
            if r.get("reason"):
                detail += f" ({r['reason']})"
        lines.append(
            f"{r['backend']:<20} {r['state']:<10} {r['consecutive_failures']:>8} {r['opens']:>5}  "
            f"{detail}".rstrip()
        )
    return "\n".join(lines) + "\n"

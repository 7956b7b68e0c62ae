"""One scheduler worker process of ``crucible serve --workers N`` (run by the supervisor).

``python -m crucible_server.workerproc --lease S --drain-timeout S`` runs a
:class:`~crucible_core.queue.worker.Worker` with one slot on
``$CRUCIBLE_HOME``'s queue. It takes orders from its supervisor on stdin, so
one stop of ``crucible serve`` is one drain, however the signal arrived:

- a line ``drain``, SIGTERM, or the end of stdin (the supervisor died, even
  by SIGKILL: its end of the pipe closes) start draining: no new claims,
  the running job may finish for ``--drain-timeout`` seconds, then it is
  told to stop, saves a checkpoint and is released back to the queue;
- a line ``now`` stops without waiting for the job to finish;
- SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group,
  and the supervisor relays it as ``drain`` (a second one as ``now``), so
  the worker does not count it twice.

Exit status 0 after a drain.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _orders(worker: Any) -> None:
    for line in sys.stdin:
        order = line.strip()
        if order == "now":
            worker.stop(now=True)
        elif order == "drain":
            worker.stop()
    worker.stop()  # stdin closed: the supervisor is gone


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker until told to stop (module docstring)."""
    parser = argparse.ArgumentParser(prog="crucible_server.workerproc")
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--poll", type=float, default=0.25)
    args = parser.parse_args(argv)

    from crucible_core.queue.scheduler import Scheduler
    from crucible_core.queue.worker import Worker

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sched = Scheduler()
    worker = Worker(
        sched,
        concurrency=1,
        lease_s=args.lease,
        poll_s=args.poll,
        drain_timeout_s=args.drain_timeout,
    )
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    threading.Thread(target=_orders, args=(worker,), name="orders", daemon=True).start()
    try:
        stats = worker.run()
    finally:
        sched.close()
    sys.stderr.write(
        f"crucible serve worker {worker.worker_id}: {stats.claimed} claimed, "
        f"{stats.succeeded} succeeded, {stats.failed} failed, {stats.released} released\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

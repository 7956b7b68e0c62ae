"""``crucible worker``: claim and run jobs until SIGTERM or SIGINT, then drain.

On the first SIGTERM/SIGINT the worker stops claiming, lets running jobs
finish for ``--drain-timeout`` seconds, then asks them to stop; a job whose
handler stops is released, so another worker takes it over at once. A
second signal skips the wait and the process exits (130). A job whose
handler ignores the request is never released while it may still run: its
lease lapses ``--lease`` seconds after this process exits.

The database is checked (``PRAGMA quick_check``) before the first claim; a
damaged file stops the worker with exit 2 naming the file and the repair
command (``crucible jobs recover``). Durations must be finite numbers > 0
(``--drain-timeout`` may be 0); anything else is exit 2.

``--executor NAME`` runs each claimed job through a registered executor that
runs jobs (``run_job``) instead of the worker's own threads: ``--executor ray
--address auto`` runs them as Ray tasks (plugin crucible-ray). ``--address``
is passed to the executor as its ``address`` option.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from crucible_core.errors import EXIT_INTERRUPTED, ConfigError, NotFound


class _WorkerCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = __doc__
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.add_argument(
            "--concurrency", type=int, default=1, metavar="N", help="jobs run at once (default 1)"
        )
        parser.add_argument(
            "--lease", type=float, default=30.0, metavar="S", help="lease length in seconds"
        )
        parser.add_argument(
            "--poll", type=float, default=0.25, metavar="S", help="idle poll interval in seconds"
        )
        parser.add_argument(
            "--drain-timeout",
            type=float,
            default=30.0,
            metavar="S",
            help="how long running jobs may finish after a stop signal",
        )
        parser.add_argument("--max-jobs", type=int, metavar="N", help="exit after N jobs")
        parser.add_argument(
            "--exit-when-idle",
            action="store_true",
            help="exit once no job is pending, queued or running",
        )
        parser.add_argument(
            "--progress", action="store_true", help="draw a progress bar per job on stderr"
        )
        parser.add_argument(
            "--executor",
            metavar="NAME",
            help="run jobs through this executor (e.g. ray) instead of the worker's threads",
        )
        parser.add_argument(
            "--address",
            metavar="ADDR",
            help="where the executor runs jobs (ray: local, auto, ray://host:10001)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from crucible_core._options import check_count, check_seconds
        from crucible_core.queue.scheduler import Scheduler
        from crucible_core.queue.worker import Worker

        check_count("--concurrency", args.concurrency)
        check_seconds("--lease", args.lease)
        check_seconds("--poll", args.poll)
        check_seconds("--drain-timeout", args.drain_timeout, allow_zero=True)
        if args.max_jobs is not None:
            check_count("--max-jobs", args.max_jobs, minimum=0)
        executor = _executor(args.executor, args.address)
        sched = Scheduler()
        worker = Worker(
            sched,
            concurrency=args.concurrency,
            lease_s=args.lease,
            poll_s=args.poll,
            drain_timeout_s=args.drain_timeout,
            executor=executor,
        )
        progress: Any = None
        if args.progress:
            from rich.console import Console

            from crucible_core.cli.progress import ProgressSubscriber

            progress = ProgressSubscriber(console=Console(stderr=True))
            worker.bus.subscribe(progress, name="progress")
        signals = {"count": 0}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            signals["count"] += 1
            if signals["count"] == 1:
                sys.stderr.write(
                    f"crucible worker: {signal.Signals(signum).name}, draining "
                    f"(up to {args.drain_timeout:g} s; signal again to stop now)\n"
                )
                worker.stop()
            else:
                sys.stderr.write("crucible worker: stopping now\n")
                worker.stop(now=True)

        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, on_signal)
        sys.stderr.write(
            f"crucible worker {worker.worker_id}: {args.concurrency} slot(s), "
            f"database {sched.path}, pid {os.getpid()}\n"
        )
        sys.stderr.flush()
        try:
            stats = worker.run(max_jobs=args.max_jobs, exit_when_idle=args.exit_when_idle)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if progress is not None:
                progress.close()
            sched.close()
            if executor is not None:
                executor.shutdown(wait=False)
        sys.stderr.write(
            f"crucible worker {worker.worker_id}: {stats.claimed} claimed, "
            f"{stats.succeeded} succeeded, {stats.failed} failed, {stats.retried} to retry, "
            f"{stats.cancelled} cancelled, {stats.released} released\n"
        )
        return EXIT_INTERRUPTED if signals["count"] > 1 else 0


#: Executors that run jobs but ship outside core: how to get them.
_INSTALL = {"ray": "pip install crucible-ray"}


def _executor(name: str | None, address: str | None) -> Any:
    """The job-running executor ``--executor`` names (None: the worker's threads)."""
    if name is None:
        if address is not None:
            raise ConfigError("--address needs --executor", hint="add e.g. --executor ray")
        return None
    from crucible_core.plugins import get_host

    try:
        registration = get_host().get("executor", name)
    except NotFound as exc:
        install = _INSTALL.get(name)
        raise ConfigError(
            f"--executor {name!r}: {exc.message}",
            hint=f"{install} (then check `crucible plugins`)" if install else exc.hint,
            option="--executor",
        ) from None
    executor = registration.create(**({} if address is None else {"address": address}))
    if not callable(getattr(executor, "run_job", None)):
        executor.shutdown(wait=False)
        raise ConfigError(
            f"--executor {name!r} runs callables, not worker jobs (it has no run_job)",
            hint="leave --executor unset: the worker runs jobs in its own threads",
            option="--executor",
        )
    return executor


command = _WorkerCommand()

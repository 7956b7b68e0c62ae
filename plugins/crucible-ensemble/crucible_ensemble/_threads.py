"""A pool of daemon threads that are reused between requests.

Why not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined at
interpreter exit, so a member call that hangs forever would hang the process on
exit too; these are daemon threads, abandoned at exit. Why a pool at all:
starting a thread per member call costs about 0.1 ms, which is most of an
ensemble's overhead against fast members. Idle threads wait ``idle_s`` for work,
then exit, so a quiet process keeps none.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["run_in_daemon_thread"]

_tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
_lock = threading.Lock()
# Threads waiting for work minus tasks queued and not yet taken; changed only under
# _lock, and tasks are queued under _lock, so a thread that finds the queue empty
# there may exit without stranding a task.
_idle = 0
_IDLE_S = 30.0


def _worker() -> None:
    global _idle
    while True:
        try:
            task = _tasks.get(timeout=_IDLE_S)
        except queue.Empty:
            with _lock:
                if _tasks.empty():
                    _idle -= 1
                    return
            continue
        task()
        with _lock:
            _idle += 1


def run_in_daemon_thread(task: Callable[[], None]) -> None:
    """Run ``task`` (which must not raise) on an idle pooled thread, or a new one."""
    global _idle
    with _lock:
        spawn = _idle == 0
        if not spawn:
            _idle -= 1
        _tasks.put(task)
    if spawn:
        threading.Thread(target=_worker, name="crucible-ensemble", daemon=True).start()

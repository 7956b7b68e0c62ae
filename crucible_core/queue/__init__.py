"""Durable work: the SQLite job queue (:mod:`~crucible_core.queue.scheduler`), the worker
that claims and runs jobs (:mod:`~crucible_core.queue.worker`) and the database's repair
(:mod:`~crucible_core.queue.dbrepair`). Nothing is imported here, so ``import
crucible_core`` stays cheap; docs/runtime.md is the overview (aging, fsync, delivery)."""

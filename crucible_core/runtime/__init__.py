"""The runtime: what turns IR into executed, recorded work.

Nothing is imported here, so ``import crucible_core`` stays cheap; import the
module you need. One module, one job:

- :mod:`~crucible_core.runtime.paths`: where state lives (``$CRUCIBLE_HOME``).
- :mod:`~crucible_core.runtime.scheduler`: the durable SQLite work queue.
- :mod:`~crucible_core.runtime.worker`: the loop that claims and runs jobs.
- :mod:`~crucible_core.runtime.executors`: inline, thread and process executors.
- :mod:`~crucible_core.runtime.pipeline`: runs an Experiment's stage DAG.
- :mod:`~crucible_core.runtime.events`: the one event bus and its JSONL sink.
- :mod:`~crucible_core.runtime.progress`: the CLI's rich progress subscriber.
- :mod:`~crucible_core.runtime.artifacts`: content-addressed store and run manifests.
- :mod:`~crucible_core.runtime.lineage`: traces, spans and provenance edges.
- :mod:`~crucible_core.runtime.checkpoints`: the pure checkpoint-policy engine.
- :mod:`~crucible_core.runtime.cancel`: the cooperative cancellation flag.
- :mod:`~crucible_core.runtime.runstatus`: a run's status, and its one owner (a pid-stamped flock).
- :mod:`~crucible_core.runtime.dbrepair`: checks and rebuilds a damaged ``crucible.db``.

docs/runtime.md is the overview: the aging rule, the fsync policy and the
delivery guarantees.
"""

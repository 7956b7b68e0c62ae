"""Running a run: :mod:`~crucible_core.pipeline.scope` (a run's records and services from
``run.start`` to ``run.end``), :mod:`~crucible_core.pipeline.runner` (an Experiment's stage
DAG), :mod:`~crucible_core.pipeline.dag` (ordering and cycles),
:mod:`~crucible_core.pipeline.executors` (inline, thread, process) and
:mod:`~crucible_core.pipeline.cancel` (cooperative cancellation)."""

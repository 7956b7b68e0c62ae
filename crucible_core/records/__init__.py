"""What a run leaves behind, and where: :mod:`~crucible_core.records.paths`
(``$CRUCIBLE_HOME``), :mod:`~crucible_core.records.manifest` (``manifest.json``: schema and
its one writer), :mod:`~crucible_core.records.artifacts` (content-addressed store,
verification), :mod:`~crucible_core.records.events` (the event bus, ``telemetry.jsonl``),
:mod:`~crucible_core.records.lineage` (traces and provenance edges),
:mod:`~crucible_core.records.runstatus` (status vocabulary, the run-directory lock) and
:mod:`~crucible_core.records.pins` (files no clean-up may delete)."""

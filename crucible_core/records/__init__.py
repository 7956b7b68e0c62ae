"""What a run leaves behind: its manifest (:mod:`~crucible_core.records.manifest`)."""

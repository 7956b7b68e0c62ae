"""crucible-mlflow: Crucible runs in an MLflow tracking store (see README.md).

Installed, it observes every runtime event (``on_event``) and records each
run as an MLflow run: the TrainingJob as params, every training and
evaluation metric at its step, the final checkpoint as an artifact, tags with
the job id and the manifest's sha256. JSONL telemetry stays the source of
truth; this is a copy that may drop events rather than slow the run.

Importing this package (or its ``plugin`` module) is cheap: ``mlflow`` is
imported on the sink's own worker thread when the first event is handled.
"""

from __future__ import annotations

__all__: list[str] = []

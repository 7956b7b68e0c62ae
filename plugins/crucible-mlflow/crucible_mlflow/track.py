"""Crucible events -> MLflow tracking calls (imports mlflow, on the sink's worker thread).

One MLflow run per crucible run execution (``run.start`` .. ``run.end``), in
the configured experiment, named after the job id:

- **params**: the run's TrainingJob (``training_job`` of its manifest, written
  before the run starts), flattened to dotted keys
  (``learning_config.optimizer.lr``); lists as JSON;
- **metrics**, each at its event's step and timestamp: ``train/loss`` and
  ``train/<name>`` for every number of a ``train.step`` event's ``metrics``
  (``lr``, ``grad_norm``, ``tokens``...); ``eval/<split>/loss`` and
  ``eval/<split>/<name>`` for ``eval.metric`` events. Names MLflow refuses
  have their other characters replaced by ``_``;
- **artifact**: the final checkpoint (the last ``train.checkpoint``, the
  sampler weights when there are some) under ``final_checkpoint/``, when its
  URI is a local file or directory;
- **tags**: ``crucible.job_id``, ``crucible.job_kind``,
  ``crucible.experiment_id``, ``crucible.config_digest``,
  ``crucible.attempt``, ``crucible.execution``, ``crucible.dataset_hash``,
  ``crucible.parent_job_id`` at the start; ``crucible.status``,
  ``crucible.final_checkpoint`` (its URI) and ``crucible.manifest_sha256``
  at the end. The manifest is hashed once the process working on the run has
  released it (its ``.owner.lock``; at most ``manifest_wait_s`` seconds after
  ``run.end``), so the hash is that of the run's final manifest.json;
- **status**: ``succeeded`` -> FINISHED, ``failed``/``dead`` -> FAILED,
  anything else that ends a run (cancelled, interrupted, budget exhausted,
  crashed, or never ended when the sink closes) -> KILLED.

Metrics are sent in batches (``log_batch``): every ``batch_s`` seconds (5) or
1000 metrics, whichever comes first, when the sink's queue has been empty for
a second, and before a run ends. One call per step would cost the run: a
SQLite store commits each call, on a thread that shares the GIL with training.

Not thread-safe: :class:`crucible_mlflow.sink.MlflowSink` calls it from its
one worker thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlparse

from crucible_mlflow.config import MlflowConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from crucible_core.records.events import Event

__all__ = ["FINAL_JOB_STATES", "Tracker", "flatten", "metric_key", "mlflow_status"]

log = logging.getLogger("crucible_mlflow")

#: ``job.state`` statuses that end a job (a worker job that ended without ``run.end``).
FINAL_JOB_STATES: Final = frozenset(
    {"succeeded", "failed", "cancelled", "dead", "budget_exhausted"}
)
_BATCH: Final = 1000  # MLflow's limit of metrics per log_batch
_PARAMS_BATCH: Final = 100  # ... and of params
_PARAM_VALUE_MAX: Final = 6000
_INVALID: Final = re.compile(r"[^\w\-. /:]")


def mlflow_status(status: str | None) -> str:
    """The MLflow run status of a crucible run that ended with ``status``."""
    if status == "succeeded":
        return "FINISHED"
    if status in ("failed", "dead"):
        return "FAILED"
    return "KILLED"


def metric_key(*parts: str) -> str:
    """``parts`` joined by ``/``, as a name MLflow accepts.

    MLflow refuses characters other than letters, digits, ``_ - . / :`` and
    space (those become ``_``) and names that are not their own normalised
    path (empty, ``.`` and ``..`` segments: dropped, ``__``).
    """
    segments: list[str] = []
    for segment in _INVALID.sub("_", "/".join(parts)).split("/"):
        if segment == "..":
            segments.append("__")
        elif segment not in ("", "."):
            segments.append(segment)
    return "/".join(segments) or "_"


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings as ``{"a.b.c": str(leaf)}``; lists and other values as JSON text."""
    out: dict[str, str] = {}
    if isinstance(value, Mapping):
        for key, item in value.items():  # pyright: ignore[reportUnknownVariableType]
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    if prefix:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[prefix[:-1]] = text[:_PARAM_VALUE_MAX]
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif not parsed.scheme and uri.startswith("/"):
        path = Path(uri)
    else:
        return None
    return path if path.exists() else None


@dataclass
class _Run:
    run_id: str
    job_id: str
    checkpoints: list[tuple[str, str | None]] = field(default_factory=list[tuple[str, str | None]])
    metrics: list[Metric] = field(default_factory=list["Metric"])


class Tracker:
    """Turns events into MLflow calls through one ``MlflowClient`` (see the module doc)."""

    def __init__(
        self, config: MlflowConfig, *, manifest_wait_s: float = 5.0, batch_s: float = 5.0
    ) -> None:
        self.config = config
        self.manifest_wait_s = manifest_wait_s
        self.batch_s = batch_s
        self._sent_at = time.monotonic()
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        #: Open MLflow runs by crucible job id.
        self.runs: dict[str, _Run] = {}
        #: MLflow run ids of every run this tracker started, by job id (the latest).
        self.run_ids: dict[str, str] = {}

    # -- the client ----------------------------------------------------------------

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            # MLflow 3 sends anonymous usage telemetry to its vendor unless told not to; a
            # copy of crucible's telemetry must not phone anywhere but the configured store.
            # An explicit MLFLOW_DISABLE_TELEMETRY=false opts back in.
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            from mlflow import MlflowClient

            uri = self.config.tracking_uri or ""
            if uri.startswith("sqlite:///"):  # older mlflow does not create the directory
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

            self._client = MlflowClient(tracking_uri=self.config.tracking_uri)
        return self._client

    def experiment_id(self) -> str:
        """The configured experiment's id, created (with the artifact root) if missing."""
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.config.experiment)
            if found is not None:
                self._experiment_id = str(found.experiment_id)
            else:
                self._experiment_id = str(
                    self.client.create_experiment(
                        self.config.experiment, artifact_location=self.config.artifact_location
                    )
                )
        return self._experiment_id

    # -- events --------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        kind, data = event.kind, event.data
        if kind == "run.start":
            self._start(event)
            return
        run = self.runs.get(event.job_id)
        if run is None:
            return
        if kind == "train.step":
            self._metrics(run, event, ("train",), data)
        elif kind == "eval.metric":
            self._metrics(run, event, ("eval", str(data.get("split") or "eval")), data)
        elif kind == "train.checkpoint" and data.get("uri"):
            run.checkpoints.append((str(data["uri"]), data.get("checkpoint_kind")))
        elif kind == "run.end" or (kind == "job.state" and data.get("status") in FINAL_JOB_STATES):
            self._end(run, event.ts, data.get("status"))

    def _start(self, event: Event) -> None:
        previous = self.runs.get(event.job_id)
        if previous is not None:  # an execution that never ended: the process lost it
            self._end(previous, event.ts, None)
        data = event.data
        dataset = data.get("dataset") if isinstance(data.get("dataset"), Mapping) else None
        tags = {
            "crucible.job_id": event.job_id,
            "crucible.job_kind": data.get("job_kind"),
            "crucible.experiment_id": data.get("experiment_id"),
            "crucible.config_digest": data.get("config_digest"),
            "crucible.attempt": data.get("attempt"),
            "crucible.execution": data.get("execution"),
            "crucible.dataset_hash": dataset.get("hash") if dataset else None,  # pyright: ignore[reportUnknownMemberType]
            "crucible.parent_job_id": data.get("parent_job_id"),
        }
        created = self.client.create_run(
            self.experiment_id(),
            start_time=int(event.ts * 1000),
            tags={k: str(v) for k, v in tags.items() if v is not None},
            run_name=event.job_id,
        )
        run = _Run(run_id=created.info.run_id, job_id=event.job_id)
        self.runs[event.job_id] = run
        self.run_ids[event.job_id] = run.run_id
        self._params(run)

    def _params(self, run: _Run) -> None:
        from mlflow.entities import Param

        from crucible_core.records.artifacts import read_manifest
        from crucible_core.records.paths import run_dir

        try:
            manifest = read_manifest(run_dir(run.job_id))
        except Exception:  # no manifest (a bare bus): no params
            return
        job = manifest.get("training_job")
        if not isinstance(job, Mapping):
            return
        params = [Param(k, v) for k, v in sorted(flatten(job).items())]
        if manifest.get("job_config_digest"):
            params.append(Param("job_config_digest", str(manifest["job_config_digest"])))
        for i in range(0, len(params), _PARAMS_BATCH):
            self.client.log_batch(run.run_id, params=params[i : i + _PARAMS_BATCH])

    def _metrics(
        self, run: _Run, event: Event, prefix: tuple[str, ...], data: Mapping[str, Any]
    ) -> None:
        from mlflow.entities import Metric

        ts, step = int(event.ts * 1000), event.step or 0
        loss = _number(data.get("loss"))
        if loss is not None:
            run.metrics.append(Metric(metric_key(*prefix, "loss"), loss, ts, step))
        metrics = data.get("metrics")
        if isinstance(metrics, Mapping):
            for name, value in metrics.items():  # pyright: ignore[reportUnknownVariableType]
                number = _number(value)
                if number is not None:
                    run.metrics.append(Metric(metric_key(*prefix, str(name)), number, ts, step))  # pyright: ignore[reportUnknownArgumentType]
        if len(run.metrics) >= _BATCH or time.monotonic() - self._sent_at >= self.batch_s:
            self.flush()

    def _send_metrics(self, run: _Run) -> None:
        while run.metrics:
            batch, run.metrics = run.metrics[:_BATCH], run.metrics[_BATCH:]
            self.client.log_batch(run.run_id, metrics=batch)

    def flush(self) -> None:
        """Send every buffered metric (the sink calls this when its queue is quiet)."""
        self._sent_at = time.monotonic()
        for run in list(self.runs.values()):
            self._send_metrics(run)

    def _end(self, run: _Run, ts: float, status: Any) -> None:
        self.runs.pop(run.job_id, None)
        self._send_metrics(run)
        status_text = str(status) if status else "unfinished"
        tags = {"crucible.status": status_text}
        final = self._final_checkpoint(run)
        if final is not None:
            tags["crucible.final_checkpoint"] = final
        digest = self._manifest_sha256(run.job_id) if status else None
        if digest is not None:
            tags["crucible.manifest_sha256"] = digest
        for key, value in tags.items():
            self.client.set_tag(run.run_id, key, value)
        self.client.set_terminated(
            run.run_id, status=mlflow_status(status), end_time=int(ts * 1000)
        )

    def _final_checkpoint(self, run: _Run) -> str | None:
        if not run.checkpoints:
            return None
        samplers = [uri for uri, kind in run.checkpoints if kind == "sampler"]
        uri = samplers[-1] if samplers else run.checkpoints[-1][0]
        path = _local_path(uri)
        if path is not None:
            if path.is_dir():
                self.client.log_artifacts(run.run_id, str(path), "final_checkpoint")
            else:
                self.client.log_artifact(run.run_id, str(path), "final_checkpoint")
        return uri

    def _manifest_sha256(self, job_id: str) -> str | None:
        """sha256 of the run's manifest.json once its owner let go of it (None: no manifest)."""
        from crucible_core.records.artifacts import MANIFEST_FILE
        from crucible_core.records.paths import run_dir
        from crucible_core.records.runstatus import is_owned

        try:
            directory = run_dir(job_id)
        except Exception:
            return None
        deadline = time.monotonic() + self.manifest_wait_s
        while is_owned(directory) and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            return hashlib.sha256((directory / MANIFEST_FILE).read_bytes()).hexdigest()
        except OSError:
            return None

    def finish(self) -> None:
        """End every open run as KILLED (the process is going away) after sending metrics."""
        now = time.time()
        for run in list(self.runs.values()):
            self._end(run, now, None)

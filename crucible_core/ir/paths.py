"""Relative paths inside a job file resolve against the file's directory.

As docker compose and Cargo do, ``crucible train path/to/job.toml`` reads
``dataset_spec.uri = "data/chat.jsonl"`` as ``path/to/data/chat.jsonl``
whatever the current directory is. :func:`resolve_paths` is applied once,
where a file is decoded (:func:`crucible_core.ir.codec.decode_file` and the
job-file reader of ``crucible jobs submit``), so every command sees the same
absolute paths and a worker running elsewhere reads the same files.

The rules:

- ``model_spec.path`` and ``model_spec.adapter`` (and those of
  ``distill.teacher.model_spec``) are always paths: a relative one becomes
  absolute.
- ``dataset_spec.uri`` and ``model_spec.tokenizer`` may be names as well
  (``sample:chat``, a Hub name, a tokenizer name), so a relative path in them
  (bare, or after a source scheme as in ``csv:data/x.csv``) is rewritten only
  when it exists under the job file's directory; otherwise it stays as written
  (and is read relative to the current directory, as before).
- In an Experiment, ``job`` given as a string is the path of a TrainingJob
  file: a relative one becomes absolute; an inline ``job`` table is resolved
  as a TrainingJob; ``evaluation.dataset`` follows the ``dataset_spec.uri``
  rule.
- Absolute paths and URLs (``scheme://...``) are never touched.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec

from crucible_core.ir.experiment import Experiment
from crucible_core.ir.training import DatasetSpec, DistillConfig, ModelSpec, TrainingJob

__all__ = ["resolve_paths", "resolve_uri"]

T = TypeVar("T")

# Two or more letters: a one-letter "scheme" is a Windows drive (C:\data).
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]+):(?P<rest>.*)$", re.DOTALL)


def _join(base: Path, rest: str) -> Path:
    return Path(os.path.normpath(base / os.path.expanduser(rest)))


def resolve_uri(uri: str, base: Path) -> str:
    """``uri`` with a relative path that exists under ``base`` made absolute (see module doc)."""
    m = _SCHEME.match(uri)
    scheme, rest = (m.group("scheme"), m.group("rest")) if m else (None, uri)
    if not rest or rest.startswith("//") or Path(os.path.expanduser(rest)).is_absolute():
        return uri
    candidate = _join(base, rest)
    if not candidate.exists():
        return uri
    return f"{scheme}:{candidate}" if scheme else str(candidate)


def _dataset(spec: DatasetSpec, base: Path) -> DatasetSpec:
    uri = resolve_uri(spec.uri, base)
    return spec if uri == spec.uri else msgspec.structs.replace(spec, uri=uri)


def _model(spec: ModelSpec, base: Path) -> ModelSpec:
    changes: dict[str, str] = {}
    if spec.path is not None and not Path(os.path.expanduser(spec.path)).is_absolute():
        changes["path"] = str(_join(base, spec.path))
    if spec.adapter is not None and not Path(os.path.expanduser(spec.adapter)).is_absolute():
        changes["adapter"] = str(_join(base, spec.adapter))
    if spec.tokenizer is not None:
        tokenizer = resolve_uri(spec.tokenizer, base)
        if tokenizer != spec.tokenizer:
            changes["tokenizer"] = tokenizer
    return msgspec.structs.replace(spec, **changes) if changes else spec


def _distill(cfg: DistillConfig | None, base: Path) -> DistillConfig | None:
    """A distillation teacher's model (an exported model directory, an adapter) too."""
    teacher = cfg.teacher.model_spec if cfg is not None else None
    if cfg is None or teacher is None:
        return cfg
    model = _model(teacher, base)
    if model is teacher:
        return cfg
    return msgspec.structs.replace(
        cfg, teacher=msgspec.structs.replace(cfg.teacher, model_spec=model)
    )


def resolve_paths(obj: T, base: str | Path) -> T:
    """``obj`` (a TrainingJob or Experiment) with its relative paths resolved against ``base``.

    ``base`` is the directory of the file ``obj`` was read from. Other values
    are returned unchanged.
    """
    root = Path(base).absolute()
    if isinstance(obj, TrainingJob):
        dataset, model = _dataset(obj.dataset_spec, root), _model(obj.model_spec, root)
        distill = _distill(obj.distill, root)
        if dataset is obj.dataset_spec and model is obj.model_spec and distill is obj.distill:
            return obj
        return msgspec.structs.replace(obj, dataset_spec=dataset, model_spec=model, distill=distill)
    if isinstance(obj, Experiment):
        return cast(T, _experiment(obj, root))
    return obj


def _experiment(exp: Experiment, root: Path) -> Experiment:
    changes: dict[str, Any] = {}
    if exp.dataset is not None:
        dataset = _dataset(exp.dataset, root)
        if dataset is not exp.dataset:
            changes["dataset"] = dataset
    if isinstance(exp.job, str):
        if not Path(os.path.expanduser(exp.job)).is_absolute():
            changes["job"] = str(_join(root, exp.job))
    elif exp.job is not None:
        job = resolve_paths(exp.job, root)
        if job is not exp.job:
            changes["job"] = job
    if exp.evaluation is not None:
        uri = resolve_uri(exp.evaluation.dataset, root)
        if uri != exp.evaluation.dataset:
            changes["evaluation"] = msgspec.structs.replace(exp.evaluation, dataset=uri)
    return msgspec.structs.replace(exp, **changes) if changes else exp

"""What a version is made of, read from a run: the checkpoint, its checksums, the run's record.

:func:`read_candidate` finds the run (a run id, a run directory or a path in
one, as every run command resolves it), picks the checkpoint (the final
sampler weights by default, or a kept state checkpoint by step), and collects
the facts a version records. Nothing is written. :func:`verify_and_store`
rehashes the checkpoint against the sha256 the run's manifest recorded and
puts it (and a copy of the manifest) into the core artifact store; a missing
file or a mismatch raises before anything is stored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from crucible_core.cli.runref import find_run
from crucible_core.errors import ConfigError, IntegrityError, NotFound
from crucible_core.records.artifacts import (
    LocalArtifactStore,
    digest_path,
    uri_path,
    verify_run,
)

__all__ = ["Candidate", "read_candidate", "verify_and_store"]


@dataclass
class Candidate:
    """A version-to-be: the run's facts and its checkpoint (not yet verified or stored)."""

    run_id: str
    run_dir: Path
    checkpoint: str  # "final" or "step-N"
    step: int | None
    path: Path  # the checkpoint inside the run directory
    sha256: str  # as the manifest recorded it
    entry_uri: str
    kind: str
    backend: str
    base_model: str
    base_revision: str | None
    config_hash: str
    dataset_hash: str | None
    dataset_uri: str | None
    manifest_hash: str
    metrics: dict[str, float] = field(default_factory=dict[str, float])

    @property
    def identity(self) -> str:
        """What makes registering twice the same version: config hash + artifact checksums."""
        return hashlib.sha256(f"{self.config_hash}\n{self.sha256}\n".encode()).hexdigest()


def _entry_for(manifest: dict[str, Any], run_dir: Path, target: Path) -> dict[str, Any] | None:
    for raw in cast(list[Any], manifest.get("artifacts") or []):
        if not isinstance(raw, dict):
            continue
        entry = cast(dict[str, Any], raw)
        rel = entry.get("path")
        if not isinstance(rel, str):
            continue
        where = Path(rel) if Path(rel).is_absolute() else run_dir / rel
        if where.resolve() == target.resolve():
            return entry
    return None


def _metrics(manifest: dict[str, Any], step: int | None) -> dict[str, float]:
    training = cast(dict[str, Any], manifest.get("training") or {})
    out: dict[str, float] = {}
    if step is None:
        for key in ("initial_loss", "final_loss", "steps", "tokens", "cost"):
            v = training.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[key] = float(v)
        evaluation = cast(dict[str, Any], training.get("evaluation") or {})
        for key in ("eval_loss", "perplexity"):
            v = evaluation.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[key] = float(v)
        sampled = cast(dict[str, Any], evaluation.get("sampled") or {})
        after = cast(dict[str, Any], sampled.get("after") or {})
        for key, v in cast(dict[str, Any], after.get("scores") or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[f"sampled.{key}"] = float(v)
    else:
        out["step"] = float(step)
        for c in cast(list[Any], manifest.get("checkpoints") or []):
            if isinstance(c, dict) and cast(dict[str, Any], c).get("step") == step:
                metric = cast(dict[str, Any], c).get("metric")
                if isinstance(metric, int | float) and not isinstance(metric, bool):
                    out["checkpoint_metric"] = float(metric)
    return out


def _checkpoint_of(
    manifest: dict[str, Any], run_dir: Path, which: str | None
) -> tuple[str, int | None, dict[str, Any]]:
    if which in (None, "final"):
        raw = manifest.get("sampler_checkpoint")
        if not isinstance(raw, dict):
            raise ConfigError(
                f"run {run_dir.name} has no final weights (it did not finish)",
                hint="register a kept checkpoint with --checkpoint STEP, or resume the run",
            )
        return (
            "final",
            cast(int | None, cast(dict[str, Any], raw).get("step")),
            cast(dict[str, Any], raw),
        )
    text = which.removeprefix("step-")
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(
            f"--checkpoint {which!r} is not a checkpoint", hint="give a step number or 'final'"
        )
    step = int(text)
    kept: list[int] = []
    for c in cast(list[Any], manifest.get("checkpoints") or []):
        if not isinstance(c, dict):
            continue
        c = cast(dict[str, Any], c)
        kept.append(int(c.get("step") or 0))
        if c.get("step") == step:
            return f"step-{step}", step, cast(dict[str, Any], c.get("ref") or {})
    raise NotFound(
        f"run {run_dir.name} keeps no checkpoint of step {step}",
        hint=f"kept steps: {', '.join(map(str, kept)) or 'none'}; or 'final'",
    )


def read_candidate(run: str, checkpoint: str | None = None) -> Candidate:
    """The version-to-be of ``run``'s ``checkpoint`` (None: its final weights)."""
    run_dir, manifest = find_run(run)
    label, step, ref = _checkpoint_of(manifest, run_dir, checkpoint)
    uri = str(ref.get("uri") or "")
    path = uri_path(uri)
    if path is None:
        raise ConfigError(
            f"run {run_dir.name}: checkpoint {label} is remote ({uri})",
            hint="the registry registers checkpoints stored on this machine only (for now)",
        )
    entry = _entry_for(manifest, run_dir, path)
    if entry is None or not isinstance(entry.get("sha256"), str):
        raise IntegrityError(
            f"run {run_dir.name}: the manifest records no sha256 for checkpoint {label} ({path})",
            hint="only checkpoints the run listed with their checksums can be registered",
        )
    model = cast(dict[str, Any], manifest.get("model") or {})
    backend = cast(dict[str, Any], manifest.get("backend") or {})
    dataset = cast(dict[str, Any], manifest.get("dataset") or {})
    config_hash = manifest.get("job_config_digest")
    if not isinstance(config_hash, str) or not isinstance(model.get("name"), str):
        raise ConfigError(
            f"run {run_dir.name}: the manifest records no training job (config digest, model)",
            hint="is it a training run?",
        )
    manifest_bytes = (run_dir / "manifest.json").read_bytes()
    return Candidate(
        run_id=run_dir.name,
        run_dir=run_dir,
        checkpoint=label,
        step=step if label != "final" else None,
        path=path,
        sha256=str(entry["sha256"]),
        entry_uri=str(entry.get("uri") or ""),
        kind=str(entry.get("type") or "checkpoint"),
        backend=str(backend.get("name") or "local"),
        base_model=str(model["name"]),
        base_revision=cast(str | None, model.get("revision")),
        config_hash=config_hash,
        dataset_hash=cast(str | None, dataset.get("hash")),
        dataset_uri=cast(str | None, dataset.get("uri")),
        manifest_hash=hashlib.sha256(manifest_bytes).hexdigest(),
        metrics=_metrics(manifest, step if label != "final" else None),
    )


def verify_and_store(c: Candidate, store: LocalArtifactStore) -> tuple[str, int]:
    """Rehash the checkpoint, store it by content; return (store URI, size). Raises on damage."""
    report = verify_run(c.run_dir, uri=c.entry_uri)
    if report.missing or not c.path.exists():
        missing = ", ".join(report.missing[:4]) or str(c.path)
        raise NotFound(
            f"run {c.run_id}: checkpoint {c.checkpoint} is missing ({missing})",
            hint=f"`crucible artifacts verify {c.run_id}` lists the damage; nothing was registered",
        )
    if not report.ok:
        altered = ", ".join(a.path for a in report.altered[:4])
        raise IntegrityError(
            f"run {c.run_id}: checkpoint {c.checkpoint} does not match its recorded sha256 "
            f"({altered} ALTERED)",
            hint=f"`crucible artifacts verify {c.run_id}` lists the damage; nothing was registered",
        )
    if store.exists(c.sha256):
        obj = store.path_of(c.sha256)
        actual, size = digest_path(obj)
        if actual != c.sha256:
            raise IntegrityError(
                f"the artifact store's object {obj} does not match its sha256",
                hint="move the damaged object aside and register again",
            )
        return obj.resolve().as_uri(), size
    artifact = store.put(c.path, type="checkpoint", name=f"{c.run_id}/{c.checkpoint}")
    if artifact.sha256 != c.sha256:
        raise IntegrityError(
            f"run {c.run_id}: checkpoint {c.checkpoint} changed while it was being registered",
            hint="register it again once nothing writes to it",
        )
    return artifact.uri, int(artifact.size_bytes or 0)

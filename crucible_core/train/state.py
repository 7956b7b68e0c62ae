"""The loop state on disk: what a resume continues from, and how it stays trustworthy.

A run directory holds ``trainer_state.json`` (the loop state of the newest
checkpoint: the one source of truth ``crucible resume`` and a reclaimed
worker job continue from) and ``states/step-NNNNNN.json`` (the loop state of
each kept checkpoint, what a resume falls back to when the newest checkpoint
fails its sha256 check). Each checkpoint is listed in the manifest with its
hashes (through :class:`~crucible_core.records.manifest.RunRecord`); the
checkpoint files themselves belong to the backend, which deletes the ones the
policy retires (``TrainingSession.delete_checkpoint``).

Ordering rules that make a crash harmless: a checkpoint's state is written
before the manifest lists it; a retired checkpoint is unlisted before its
files are deleted; a fallback rewrites ``trainer_state.json`` before the
failing checkpoints go.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from crucible_core.contracts import TrainingSession
from crucible_core.errors import ConfigError, IntegrityError, NotFound
from crucible_core.ir.lineage import Artifact
from crucible_core.records.artifacts import digest_path, uri_path, verify_run, write_json
from crucible_core.records.manifest import RunRecord
from crucible_core.train.loop import LoopState, SavedCheckpoint

__all__ = [
    "STATES_DIR",
    "STATE_FILE",
    "clean_leftovers",
    "fall_back",
    "read_loop_state",
    "record_checkpoint",
    "retire_checkpoint",
    "verified_resume",
]

STATE_FILE = "trainer_state.json"
STATES_DIR = "states"
log = logging.getLogger(__name__)


def read_loop_state(run_dir: Path) -> LoopState:
    """The loop state saved with a run's newest checkpoint; NotFound if it has none."""
    path = run_dir / STATE_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=LoopState)
    except FileNotFoundError:
        raise NotFound(
            f"{run_dir}: the run saved no checkpoint to resume from",
            hint="runs are resumable after their first checkpoint (checkpoint_policy.save_every)",
        ) from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{path}: unreadable loop state ({exc})") from None


def _state_path(run_dir: Path, step: int) -> Path:
    return run_dir / STATES_DIR / f"step-{step:06d}.json"


def record_checkpoint(run_dir: Path, saved: SavedCheckpoint, state: LoopState) -> None:
    """Persist the loop state, then list the checkpoint in the manifest (with hashes if local)."""
    write_json(_state_path(run_dir, saved.step), state)
    write_json(run_dir / STATE_FILE, state)
    ref = saved.ref
    path = uri_path(ref.uri)
    local = path is not None and path.exists()
    sha, size = digest_path(path) if path is not None and local else (None, None)
    artifact = Artifact(
        artifact_id=f"checkpoint:{ref.uri}",
        type="checkpoint",
        uri=ref.uri,
        sha256=sha,
        size_bytes=size,
        created_at=datetime.now(UTC),
        metadata={"name": f"state-step-{saved.step}", "step": saved.step, "kind": ref.kind},
    )
    record = RunRecord(run_dir)
    record.record_artifact(artifact, path=path if local else None)
    record.update(last_checkpoint=ref, checkpoints=state.checkpoints)


def retire_checkpoint(run_dir: Path, session: TrainingSession, saved: SavedCheckpoint) -> None:
    """Unlist a checkpoint the policy no longer keeps, then have the backend delete it.

    The record goes first: a crash in between leaves files nobody lists (harmless,
    overwritten by the next save of that step), never a manifest listing missing files.
    A checkpoint something pins (:mod:`crucible_core.records.pins`, e.g. a registered
    model version) keeps its files and its manifest entry: it only leaves the loop state.
    """
    from crucible_core.records import pins

    record = RunRecord(run_dir)
    listed = record.read().artifacts
    if any(a.uri == saved.ref.uri and pins.is_pinned(a.sha256) for a in listed):
        log.info("checkpoint of step %s is pinned: its files are kept", saved.step)
        return
    record.forget_artifacts(saved.ref.uri)
    session.delete_checkpoint(saved.ref)
    with contextlib.suppress(FileNotFoundError):
        _state_path(run_dir, saved.step).unlink()


def fall_back(run_dir: Path, session: TrainingSession, given: LoopState, chosen: LoopState) -> None:
    """Make ``chosen`` the run's newest state; unlist and delete the failing later checkpoints.

    The state is rewritten first, so an interruption before the next checkpoint
    resumes from ``chosen`` again instead of the discarded one.
    """
    write_json(run_dir / STATE_FILE, chosen)
    RunRecord(run_dir).update(
        resumed_from_step=chosen.step,
        last_checkpoint=chosen.checkpoints[-1].ref,
        checkpoints=chosen.checkpoints,
    )
    for c in given.checkpoints:
        if c.step > chosen.step:
            retire_checkpoint(run_dir, session, c)


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove the temporary files a killed process left behind (its own run, lock held)."""
    removed: list[Path] = []
    for folder in (run_dir, run_dir / STATES_DIR):
        if not folder.is_dir():
            continue
        for f in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f)
    return removed


def _checkpoint_problem(run_dir: Path, saved: SavedCheckpoint) -> str | None:
    """Why the checkpoint fails its sha256 check (None: it matches, or is remote/unlisted)."""
    report = verify_run(run_dir, uri=saved.ref.uri)
    local = uri_path(saved.ref.uri)
    if not (report.checked or report.missing or report.altered) and local is not None:
        # Unlisted (a run from before hashes were recorded): it must at least exist.
        return None if local.exists() else f"step {saved.step}: {local} MISSING"
    if report.ok:
        return None
    bad = [*report.missing, *(a.path for a in report.altered)]
    return f"step {saved.step}: " + ", ".join(
        f"{p} {'MISSING' if p in report.missing else 'ALTERED'}" for p in bad[:4]
    )


def verified_resume(run_dir: Path, resume: LoopState) -> tuple[LoopState, list[str]]:
    """The state to resume from: ``resume`` if its newest checkpoint verifies, else fallback.

    Every candidate is checked against the sha256 the manifest recorded for it
    before anything loads it. A corrupted newest checkpoint gives way to the
    newest earlier one that verifies (its loop state is in ``states/``);
    returns ``(state, problems)``, problems naming what failed. None verifying
    raises :class:`~crucible_core.errors.IntegrityError`.
    """
    problems: list[str] = []
    for c in reversed(resume.checkpoints):
        problem = _checkpoint_problem(run_dir, c)
        if problem is not None:
            problems.append(problem)
            continue
        if c is resume.checkpoints[-1]:
            return resume, problems
        try:
            state = msgspec.json.decode(_state_path(run_dir, c.step).read_bytes(), type=LoopState)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            problems.append(f"step {c.step}: its loop state ({STATES_DIR}/) is unreadable")
            continue
        earlier = [k for k in resume.checkpoints if k.step <= c.step]
        state.checkpoints = [k for k in state.checkpoints if k in earlier] or [c]
        return state, problems
    raise IntegrityError(
        f"{run_dir}: no checkpoint of the run passes its sha256 check ({'; '.join(problems)})",
        hint=f"`crucible artifacts verify {run_dir.name}` lists the damage; start the run "
        "again with `crucible train`",
        problems=problems,
    )

"""DPO's reference log-probabilities: computed once from a frozen model, cached on disk.

The reference is ``dpo.reference``: ``"base"`` (the job's base model) or the
URI of a state checkpoint. Its per-token log-probabilities of every Datum
(``forward`` with no gradient, in batches) are written to
``$CRUCIBLE_HOME/cache/dpo-reference/<key>.json``, where ``key`` digests the
dataset's content hash, the exact token ids and weights of the rendered pairs
(so the template, tokenizer and length limit are in it), the base model
(name, path, revision), the adapter and the reference. A second run on the
same data and base reads the file and runs no reference pass; a resumed run
gets the numbers of its first attempt.

Which weights compute them: a fresh run with ``reference = "base"`` uses its
own training session before the first step (its weights are the base: a new
LoRA adapter starts as the identity, full fine-tuning from the base); a
resumed run or a checkpoint reference opens a second session of the same
backend (loading the checkpoint), used only for ``forward`` and then closed.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from crucible_core.contracts import TrainingBackend, TrainingSession
from crucible_core.ir.backend import CheckpointRef, Datum
from crucible_core.ir.training import Loss, TrainingJob
from crucible_core.records import paths
from crucible_core.records.artifacts import write_json

__all__ = ["ReferenceResult", "attach", "cache_path", "reference_key", "reference_logprobs"]


class ReferenceResult(msgspec.Struct, kw_only=True):
    """The reference log-probabilities of each Datum (``train`` then ``validation``)."""

    key: str
    train: list[list[float]]
    validation: list[list[float]]
    cached: bool = False


def reference_key(
    job: TrainingJob, dataset_hash: str | None, train: Sequence[Datum], validation: Sequence[Datum]
) -> str:
    """The cache key: dataset hash, rendered pairs, base model and reference, digested."""
    model = job.model_spec
    h = hashlib.sha256()
    head = {
        "dataset_hash": dataset_hash,
        "model": [model.name, model.path, model.revision, model.dtype],
        "adapter": msgspec.to_builtins(job.adapter_config),
        "reference": job.dpo_config.reference,
        "backend": job.backend_ref.name,
    }
    h.update(msgspec.json.encode(head))
    for split in (train, validation):
        h.update(b"|")
        for datum in split:
            h.update(msgspec.json.encode([datum.model_input, datum.loss_fn_inputs.weights]))
    return h.hexdigest()


def cache_path(key: str) -> Path:
    """Where the reference of ``key`` is kept."""
    return paths.crucible_home() / "cache" / "dpo-reference" / f"{key}.json"


def _score(
    session: TrainingSession, data: Sequence[Datum], chunk: int, deadline: float
) -> list[list[float]]:
    out: list[list[float]] = []
    for start in range(0, len(data), chunk):
        result = session.forward(data[start : start + chunk], Loss()).result(timeout=deadline)
        out.extend([list(row) for row in result.logprobs])
    return out


def reference_logprobs(
    job: TrainingJob,
    *,
    dataset_hash: str | None,
    train: Sequence[Datum],
    validation: Sequence[Datum],
    session: TrainingSession | None,
    backend: TrainingBackend,
    deadline_s: float,
    on_compute: Callable[[str], None] | None = None,
) -> ReferenceResult:
    """The cached reference of ``job``'s data, or compute it (and cache it).

    ``session`` is the run's training session if its weights are still the
    reference (a fresh run, ``reference = "base"``), else None: a second
    session is opened. ``on_compute(how)`` is told which weights are used.
    """
    key = reference_key(job, dataset_hash, train, validation)
    path = cache_path(key)
    if path.exists():
        try:
            cached = msgspec.json.decode(path.read_bytes(), type=ReferenceResult)
        except (msgspec.DecodeError, msgspec.ValidationError):
            cached = None  # a damaged cache entry is computed again
        if cached is not None and [len(r) for r in cached.train] == [d.num_tokens for d in train]:
            return msgspec.structs.replace(cached, cached=True)
    chunk = max(2, job.learning_config.batch_size * 2)
    reference = job.dpo_config.reference
    if session is not None and reference == "base":
        if on_compute is not None:
            on_compute("training session before the first step")
        train_lp = _score(session, train, chunk, deadline_s)
        val_lp = _score(session, validation, chunk, deadline_s)
    else:
        with tempfile.TemporaryDirectory(prefix="crucible-dpo-ref-") as scratch:
            other = backend.create_session(job, run_dir=Path(scratch))
            try:
                if reference != "base":
                    if on_compute is not None:
                        on_compute(f"checkpoint {reference}")
                    ref = CheckpointRef(uri=reference, kind="state")
                    other.load_state(ref).result(timeout=deadline_s)
                elif on_compute is not None:
                    on_compute("a fresh session of the base model")
                train_lp = _score(other, train, chunk, deadline_s)
                val_lp = _score(other, validation, chunk, deadline_s)
            finally:
                other.close()
    result = ReferenceResult(key=key, train=train_lp, validation=val_lp)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, msgspec.to_builtins(result))
    return result


def attach(data: Sequence[Datum], logprobs: Sequence[Sequence[float]]) -> list[Datum]:
    """``data`` with ``loss_fn_inputs.ref_logprobs`` set from ``logprobs``."""
    out: list[Datum] = []
    for datum, lp in zip(data, logprobs, strict=True):
        inputs = msgspec.structs.replace(datum.loss_fn_inputs, ref_logprobs=list(lp))
        out.append(msgspec.structs.replace(datum, loss_fn_inputs=inputs))
    return out

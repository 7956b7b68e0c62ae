"""A distillation teacher: resolved from ``distill.teacher``, opened, sampled, cached.

:func:`resolve_teacher` turns a :class:`~crucible_core.ir.training.TeacherSpec`
into a :class:`Teacher`: the backend, the TrainingJob whose session holds the
teacher's weights (base model and adapter), the state checkpoint to load, and
an ``identity`` (what the cache key and the lineage edge name). A ``run`` is
read from its manifest: its own TrainingJob (so the adapter shape matches its
checkpoints) and its newest state checkpoint (``trainer_state.json``).

:func:`open_teacher` gives a :class:`TeacherHandle`. On a training backend it is
a session of the teacher's job (``load_state`` of the checkpoint), sampling
through ``save_weights_for_sampler`` and scoring through ``forward``; on an
inference-only backend it samples with ``complete`` and cannot score.

:func:`teacher_completions` samples every prompt once per distinct teacher,
sampling setting and dataset, and keeps the result in
``$CRUCIBLE_HOME/cache/distill-teacher/<key>.json``: a second run, and a resumed
one, reads the file and samples nothing, so its data are the first attempt's.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.contracts import Future, Sampler, TrainingSession
from crucible_core.errors import ConfigError, CrucibleError, NotFound
from crucible_core.ir.backend import (
    CheckpointRef,
    Completion,
    Datum,
    Message,
    Prompt,
    SamplingParams,
)
from crucible_core.ir.codec import convert
from crucible_core.ir.common import BackendRef
from crucible_core.ir.training import Loss, TrainingJob
from crucible_core.records import paths
from crucible_core.records.artifacts import write_json

__all__ = [
    "Teacher",
    "TeacherCompletions",
    "TeacherHandle",
    "TeacherSample",
    "cache_path",
    "open_teacher",
    "resolve_teacher",
    "teacher_completions",
    "teacher_refusal",
]


class Teacher(msgspec.Struct, kw_only=True):
    """A resolved teacher: where it runs, with which weights, and what identifies it."""

    backend: BackendRef
    #: The job a teacher session is created from (its model_spec and adapter_config).
    job: TrainingJob
    #: A state checkpoint the session loads (None: the job's base weights).
    checkpoint: str | None = None
    #: What names this teacher in the cache key and in lineage (plain data).
    identity: dict[str, Any] = {}
    #: The lineage node of the teacher's weights (``checkpoint:URI`` or ``model:NAME``).
    node: str = ""


class TeacherSample(msgspec.Struct, kw_only=True):
    """One teacher completion: its tokens (the teacher's tokenizer), text and logprobs."""

    tokens: list[int]
    text: str
    logprobs: list[float] | None = None
    finish_reason: str = "stop"


class TeacherCompletions(msgspec.Struct, kw_only=True):
    """``train``: ``n`` samples per training prompt; ``validation``: one greedy per held-out."""

    key: str
    train: list[list[TeacherSample]]
    validation: list[TeacherSample]
    cached: bool = False


def resolve_teacher(job: TrainingJob) -> Teacher:
    """The teacher ``job.distill.teacher`` names (see :class:`TeacherSpec`)."""
    spec = job.distill_config.teacher
    if spec.run is not None:
        return _from_run(spec.run)
    backend = spec.backend if spec.backend is not None else job.backend_ref
    ref = BackendRef(name=backend) if isinstance(backend, str) else backend
    model = spec.model_spec if spec.model_spec is not None else job.model_spec
    teacher_job = msgspec.structs.replace(
        job, backend=ref, model_spec=model, workflow="sft", distill=None, dpo=None
    )
    identity = {
        "backend": [ref.name, dict(ref.options)],
        "model": msgspec.to_builtins(model),
        "adapter": msgspec.to_builtins(job.adapter_config),
        "checkpoint": spec.checkpoint,
    }
    node = f"checkpoint:{spec.checkpoint}" if spec.checkpoint else f"model:{model.name}"
    return Teacher(
        backend=ref, job=teacher_job, checkpoint=spec.checkpoint, identity=identity, node=node
    )


def _from_run(ref: str) -> Teacher:
    from crucible_core.cli.runref import resolve_run
    from crucible_core.records.artifacts import read_manifest
    from crucible_core.train.state import read_loop_state

    field = "distill.teacher.run"
    try:
        run_dir = resolve_run(ref)
    except CrucibleError as exc:
        hint = f"{exc.hint}; " if exc.hint else ""
        raise ConfigError(
            f"{field}: {exc.message}",
            hint=hint + "the teacher run must exist (train it first), or name the teacher by "
            "backend, model_spec and checkpoint instead",
        ) from None
    manifest = read_manifest(run_dir)
    raw = manifest.get("training_job")
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{field}: run {run_dir.name} records no training job (is it a training run?)",
            hint="name a run made by `crucible train`, or the teacher's backend and model",
        )
    run_job = convert(cast(Mapping[str, Any], raw), TrainingJob)
    try:
        state = read_loop_state(run_dir)
    except NotFound:
        state = None
    if state is None or not state.checkpoints:
        raise ConfigError(
            f"{field}: run {run_dir.name} saved no checkpoint to take the teacher's weights from",
            hint=f"let it finish (crucible resume {run_dir.name}), or name its base model instead",
        )
    newest = state.checkpoints[-1]
    teacher_job = msgspec.structs.replace(run_job, workflow="sft", distill=None, dpo=None)
    identity = {
        "run": run_dir.name,
        "started_at": manifest.get("started_at"),
        "job_config_digest": manifest.get("job_config_digest"),
        "checkpoint": newest.ref.uri,
        "step": newest.step,
    }
    return Teacher(
        backend=run_job.backend_ref,
        job=teacher_job,
        checkpoint=newest.ref.uri,
        identity=identity,
        node=f"checkpoint:{newest.ref.uri}",
    )


def teacher_refusal(backend: Any, name: str, teacher: Teacher, mode: str) -> str | None:
    """Why ``backend`` (the teacher's, named ``name``) cannot teach in ``mode``; None if it can.

    Sampling needs a training backend (``create_session`` + ``load_sampler``: any
    weights) or an inference backend (``complete``, base weights only) whose
    capabilities do not switch inference off; ``on_policy`` needs a training
    backend that returns logprobs.
    """
    caps = backend.capabilities()
    trains = bool(caps.supports_training) and callable(getattr(backend, "create_session", None))
    infers = bool(caps.supports_inference) and callable(getattr(backend, "complete", None))
    if mode == "on_policy":
        if not trains or not caps.supports_logprobs:
            return (
                f"teacher backend {name!r} cannot score the student's samples (distill.mode = "
                '"on_policy" needs a training backend that returns logprobs from forward)'
            )
        return None
    if trains:
        return None
    if teacher.checkpoint is not None:
        return (
            f"teacher backend {name!r} cannot load the checkpoint {teacher.checkpoint!r}: it is "
            "not a training backend"
        )
    if not infers:
        return (
            f"teacher backend {name!r} cannot sample: it neither trains (no sampler over "
            "weights) nor serves completions (supports_inference is false)"
        )
    return None


class TeacherHandle:
    """An open teacher: :meth:`sample` completions, :meth:`logprobs` of given sequences."""

    def __init__(
        self,
        *,
        session: TrainingSession | None,
        sampler: Sampler | None,
        backend: Any,
        name: str,
    ) -> None:
        self.session = session
        self.sampler = sampler
        self._backend = backend
        self.name = name

    @property
    def tokenizer_name(self) -> str | None:
        """The teacher's tokenizer's name (None for an inference backend)."""
        if self.sampler is not None:
            return str(self.sampler.tokenizer.name)
        return None

    def sample(
        self, prompts: Sequence[Prompt], params: Sequence[SamplingParams], deadline_s: float
    ) -> list[list[Completion]]:
        """The completions of each prompt (all requests submitted before any is read)."""
        if self.sampler is not None:
            futures: list[Future[list[Completion]]] = [
                self.sampler.sample(p, s) for p, s in zip(prompts, params, strict=True)
            ]
            return [f.result(timeout=deadline_s) for f in futures]
        out: list[list[Completion]] = []
        for prompt, p in zip(prompts, params, strict=True):
            one = msgspec.structs.replace(p, n=1)
            out.append(
                [
                    self._backend.complete(
                        prompt, msgspec.structs.replace(one, seed=(p.seed or 0) + k)
                    )
                    for k in range(p.n)
                ]
            )
        return out

    def logprobs(self, batch: Sequence[Datum], deadline_s: float) -> list[list[float]]:
        """The teacher's log-probability of each target token of ``batch``."""
        if self.session is None:
            raise ConfigError(
                f"teacher backend {self.name!r} returns no logprobs (it is not a training backend)"
            )
        result = self.session.forward(list(batch), Loss()).result(timeout=deadline_s)
        return [list(row) for row in result.logprobs]


@contextlib.contextmanager
def open_teacher(
    teacher: Teacher, backend: Any, *, deadline_s: float, need_logprobs: bool = False
) -> Generator[TeacherHandle]:
    """The teacher, open on ``backend`` (the teacher's backend, already created)."""
    name = teacher.backend.name
    caps = backend.capabilities()
    trains = bool(caps.supports_training) and callable(getattr(backend, "create_session", None))
    if not trains:
        if need_logprobs or teacher.checkpoint is not None:
            raise ConfigError(
                teacher_refusal(backend, name, teacher, "on_policy" if need_logprobs else "sft")
                or f"teacher backend {name!r} cannot teach"
            )
        yield TeacherHandle(session=None, sampler=None, backend=backend, name=name)
        return
    with tempfile.TemporaryDirectory(prefix="crucible-teacher-") as scratch:
        session = cast(TrainingSession, backend.create_session(teacher.job, run_dir=Path(scratch)))
        sampler: Sampler | None = None
        try:
            if teacher.checkpoint is not None:
                ref = CheckpointRef(uri=teacher.checkpoint, kind="state")
                session.load_state(ref).result(timeout=deadline_s)
            sampler = session.save_weights_for_sampler("teacher").result(timeout=deadline_s)
            yield TeacherHandle(session=session, sampler=sampler, backend=backend, name=name)
        finally:
            close = getattr(sampler, "close", None)
            if callable(close):
                close()
            session.close()


def cache_path(key: str) -> Path:
    """Where the teacher completions of ``key`` are kept."""
    return paths.crucible_home() / "cache" / "distill-teacher" / f"{key}.json"


def completions_key(
    teacher: Teacher,
    job: TrainingJob,
    *,
    dataset_hash: str | None,
    prompts: Sequence[Mapping[str, Any]],
    held_out: Sequence[Mapping[str, Any]],
    student_tokenizer: str,
) -> str:
    """The cache key: the teacher, the sampling, the dataset and the exact prompts."""
    cfg = job.distill_config
    h = hashlib.sha256()
    head = {
        "teacher": teacher.identity,
        "sampling": msgspec.to_builtins(cfg.sampling),
        "seed": job.learning_config.seed,
        "dataset_hash": dataset_hash,
        "student_tokenizer": student_tokenizer,
    }
    h.update(msgspec.json.encode(head))
    for split in (prompts, held_out):
        h.update(b"|")
        for p in split:
            h.update(msgspec.json.encode(p.get("tokens")))
    return h.hexdigest()


def prompt_for(entry: Mapping[str, Any], *, by_tokens: bool) -> Prompt:
    """A prompt entry of ``data.tokenize`` as a Prompt: its tokens (the teacher shares the
    student's tokenizer) or its messages (the teacher renders them itself)."""
    if by_tokens:
        return Prompt(tokens=[int(t) for t in cast(Sequence[Any], entry["tokens"])])
    messages = cast(Sequence[Mapping[str, Any]], entry.get("messages") or [])
    return Prompt(messages=[convert(dict(m), Message) for m in messages])


def _samples(completions: Sequence[Completion]) -> list[TeacherSample]:
    return [
        TeacherSample(
            tokens=list(c.tokens),
            text=c.text,
            logprobs=list(c.logprobs) if c.logprobs is not None else None,
            finish_reason=c.finish_reason,
        )
        for c in completions
    ]


def teacher_completions(
    handle: Callable[[], contextlib.AbstractContextManager[TeacherHandle]],
    teacher: Teacher,
    job: TrainingJob,
    *,
    dataset_hash: str | None,
    prompts: Sequence[Mapping[str, Any]],
    held_out: Sequence[Mapping[str, Any]],
    student_tokenizer: str,
    deadline_s: float,
) -> TeacherCompletions:
    """The cached completions of ``prompts`` (and greedy ones of ``held_out``), or sample them
    with the teacher ``handle()`` opens (only when the cache has none) and cache them."""
    key = completions_key(
        teacher,
        job,
        dataset_hash=dataset_hash,
        prompts=prompts,
        held_out=held_out,
        student_tokenizer=student_tokenizer,
    )
    path = cache_path(key)
    if path.exists():
        try:
            cached = msgspec.json.decode(path.read_bytes(), type=TeacherCompletions)
        except (msgspec.DecodeError, msgspec.ValidationError):
            cached = None  # a damaged cache entry is sampled again
        if (
            cached is not None
            and len(cached.train) == len(prompts)
            and len(cached.validation) == len(held_out)
        ):
            return msgspec.structs.replace(cached, cached=True)
    sampling = job.distill_config.sampling
    base_seed = sampling.seed if sampling.seed is not None else job.learning_config.seed
    with handle() as open_:
        by_tokens = open_.tokenizer_name == student_tokenizer
        train_params = [
            msgspec.structs.replace(sampling, seed=base_seed + i) for i in range(len(prompts))
        ]
        greedy = msgspec.structs.replace(sampling, temperature=0.0, n=1, seed=base_seed)
        train = open_.sample(
            [prompt_for(p, by_tokens=by_tokens) for p in prompts], train_params, deadline_s
        )
        validation = open_.sample(
            [prompt_for(p, by_tokens=by_tokens) for p in held_out],
            [greedy] * len(held_out),
            deadline_s,
        )
    result = TeacherCompletions(
        key=key,
        train=[_samples(c) if by_tokens else _as_text(c) for c in train],
        validation=[(_samples(c) if by_tokens else _as_text(c))[0] for c in validation],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, msgspec.to_builtins(result))
    return result


def _as_text(completions: Sequence[Completion]) -> list[TeacherSample]:
    """Completions of a teacher with another tokenizer: only the text carries over (the
    student re-encodes it), so tokens and logprobs are dropped."""
    return [
        TeacherSample(tokens=[], text=c.text, finish_reason=c.finish_reason) for c in completions
    ]

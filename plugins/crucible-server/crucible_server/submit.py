"""Turning a submitted JSON document into a Job the scheduler can enqueue.

The body is a Job, a TrainingJob (becomes a ``training_run`` job) or an
Experiment (an ``experiment_step`` job), told apart like ``crucible jobs
submit`` does. Relative paths in a TrainingJob or Experiment are resolved
against the server's base directory (its working directory by default).
The tenant is always the caller's: a ``tenant_id`` in the body that differs
is refused. ``custom`` jobs name a Python function to call in the worker, so
only ``admin`` tokens may submit them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.errors import ConfigError, Forbidden
from crucible_core.ir import codec
from crucible_core.ir.experiment import Experiment
from crucible_core.ir.paths import resolve_paths
from crucible_core.ir.training import TrainingJob
from crucible_core.ir.work import Job
from crucible_server.auth import Principal

__all__ = ["job_from_body", "plan_problems"]


@functools.cache
def _job_fields() -> frozenset[str]:
    import msgspec.inspect as mi

    info = cast(mi.StructType, mi.type_info(Job))  # slow (type introspection): once
    return frozenset(f.encode_name for f in info.fields)


def _fits_job(raw: dict[str, Any]) -> bool:
    return set(raw) <= _job_fields()


def job_from_body(
    body: bytes, *, principal: Principal, base: Path, idempotency_key: str | None
) -> Job:
    """The Job a request body describes (module docstring), bound to the caller's tenant."""
    try:
        raw: Any = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"the body is not JSON: {exc}", hint="send a JSON object") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            "the body must be a JSON object (a Job, a TrainingJob or an Experiment)",
            hint="send one document per request",
        )
    doc = cast(dict[str, Any], raw)
    kind: type[Any] = Job if _fits_job(doc) else codec.guess_type(doc)
    if kind is TrainingJob:
        tj = resolve_paths(codec.convert(doc, TrainingJob), base)
        job = Job(id=tj.job_id or "", kind="training_run", payload=codec.to_builtins(tj))
    elif kind is Experiment:
        ex = resolve_paths(codec.convert(doc, Experiment), base)
        job = Job(kind="experiment_step", payload=codec.to_builtins(ex))
    elif kind is Job:
        job = codec.convert(doc, Job)
        if job.kind == "training_run" and isinstance(job.payload, dict):
            tj = resolve_paths(codec.convert(job.payload, TrainingJob), base)
            job = msgspec.structs.replace(job, payload=codec.to_builtins(tj))
        if "tenant_id" in doc and job.tenant_id != principal.tenant_id:
            raise Forbidden(
                f"tenant_id {job.tenant_id!r} is not the token's tenant",
                hint="leave tenant_id out: a job belongs to the token's tenant",
            )
    else:
        raise ConfigError(
            f"a {kind.__name__} is not something to run",
            hint="submit a Job, a TrainingJob or an Experiment",
        )
    if job.kind == "custom":
        principal.require("admin")
    return msgspec.structs.replace(
        job,
        tenant_id=principal.tenant_id,
        idempotency_key=idempotency_key or job.idempotency_key,
    )


def plan_problems(job: Job) -> list[dict[str, Any]]:
    """The plan's problems for a training job (empty when it can run, or is not training)."""
    if job.kind != "training_run":
        return []
    from crucible_core.train.plan import make_plan

    plan = make_plan(codec.convert(job.payload, TrainingJob), count_data=False, measure=False)
    return [codec.to_builtins(p) for p in plan.problems]

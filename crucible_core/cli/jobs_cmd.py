"""``crucible jobs``: submit, list, show, cancel and retry jobs in the durable queue.

``jobs submit FILE`` accepts a Job document (TOML, JSON or msgpack), a file
of several (``[[jobs]]`` in TOML, a ``jobs`` array or a top-level array in
JSON; they may depend on one another by ``id``), or a bare TrainingJob or
Experiment, which becomes a ``training_run`` or ``experiment_step`` job. A
training job is planned first against its backend (capabilities only) and
refused, with every problem listed, if the plan cannot run. The ids are
printed only after the jobs are committed to the database: a printed id is
an acknowledged job.

``jobs recover`` checks the database file (``PRAGMA quick_check``) and, if
it is damaged, rebuilds it from its tables, keeping the damaged file beside
it as ``crucible.db.corrupt-<stamp>`` (:mod:`crucible_core.queue.dbrepair`).
Stop every worker first.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import msgspec

from crucible_core._errors import reworded
from crucible_core.cli.output import print_json, print_table
from crucible_core.errors import ConfigError, ValidationError
from crucible_core.ids import check_id
from crucible_core.ir import codec
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.experiment import Experiment
from crucible_core.ir.files import read_document
from crucible_core.ir.paths import resolve_paths
from crucible_core.ir.training import TrainingJob
from crucible_core.ir.work import Job

if TYPE_CHECKING:
    from crucible_core.queue.scheduler import Scheduler


def _scheduler() -> Scheduler:
    from crucible_core.queue.scheduler import Scheduler

    return Scheduler()


def load_jobs(path: Path) -> list[Job]:
    """The jobs a submitted file describes (see the module docstring)."""
    fmt = codec.format_for_path(path)
    data = read_document(path, limit=codec.MAX_DOCUMENT_BYTES)
    if not data.strip():
        raise ConfigError(f"{path}: the file is empty", hint="write a Job document into it")
    try:
        if fmt == "json":
            raw: Any = msgspec.json.decode(data)
        elif fmt == "msgpack":
            raw = msgspec.msgpack.decode(data)
        else:
            raw = msgspec.toml.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ConfigError(
            f"{path}: malformed {fmt.upper()}: {exc}", hint=f"fix the {fmt.upper()} syntax"
        ) from None
    items: list[Any]
    several = True
    if isinstance(raw, list):
        items = cast(list[Any], raw)
    elif isinstance(raw, dict) and set(cast(dict[str, Any], raw)) == {"jobs"}:
        items = cast(list[Any], cast(dict[str, Any], raw)["jobs"])
        if not isinstance(items, list):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ConfigError(f"{path}: `jobs` must be an array of Job tables")
    else:
        items, several = [cast(Any, raw)], False
    jobs: list[Job] = []
    for n, item in enumerate(items):
        where = f"{path} (job {n + 1})" if several else f"{path}"
        try:
            # In a list every entry is a Job; a lone document may also be a
            # TrainingJob or an Experiment (a Job when it could be either).
            kind = Job if several or _fits_job(item) else _kind_of(item)
            if kind is TrainingJob:
                tj = resolve_paths(codec.convert(item, TrainingJob), path.parent)
                jobs.append(
                    Job(id=tj.job_id or "", kind="training_run", payload=codec.to_builtins(tj))
                )
            elif kind is Experiment:
                ex = resolve_paths(codec.convert(item, Experiment), path.parent)
                jobs.append(Job(kind="experiment_step", payload=codec.to_builtins(ex)))
            elif kind is Job:
                jobs.append(_resolve_payload(codec.convert(item, Job), path.parent))
            else:
                raise ConfigError(
                    f"a {kind.__name__} is not something to run",
                    hint="submit a Job, a TrainingJob or an Experiment",
                )
        except ConfigError as exc:
            raise reworded(exc, f"{where}: {exc.message}") from None
    return jobs


def _resolve_payload(job: Job, base: Path) -> Job:
    """A training_run Job with its TrainingJob's relative paths resolved against ``base``."""
    payload: Any = job.payload
    if job.kind != "training_run" or not isinstance(payload, dict):
        return job
    try:
        tj = codec.convert(payload, TrainingJob)
    except ConfigError:
        return job  # the plan (or the worker) reports what is wrong with it
    resolved = resolve_paths(tj, base)
    if resolved is tj:
        return job
    return msgspec.structs.replace(job, payload=codec.to_builtins(resolved))


def _fits_job(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    import msgspec.inspect as mi

    info = cast(mi.StructType, mi.type_info(Job))
    return set(cast(dict[str, Any], item)) <= {f.encode_name for f in info.fields}


def _kind_of(item: Any) -> type[Any]:
    try:
        return codec.guess_type(item)
    except ValidationError:
        raise
    except ConfigError as exc:
        raise ConfigError(
            exc.message,
            hint="a job file holds a Job (kind, payload, priority...), a list of them under "
            "`jobs`, a TrainingJob or an Experiment; `crucible ir show Job` prints a Job",
        ) from None


def _plan_training(job: Job, where: str) -> None:
    """Refuse a training job whose plan cannot run, listing every problem (exit 2)."""
    from crucible_core.train.plan import make_plan

    tj = codec.convert(job.payload, TrainingJob)
    plan = make_plan(tj, count_data=False, measure=False)
    if plan.ok:
        return
    lines = [
        f"  {p.field}: {p.message}" + (f" ({p.hint})" if p.hint else "") for p in plan.problems
    ]
    raise ConfigError(
        f"{where}: the plan refuses this job ({len(plan.problems)} problem(s)):\n"
        + "\n".join(lines),
        hint="`crucible plan FILE` shows the whole plan; --no-plan submits anyway",
    )


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _row(job: Job) -> list[Any]:
    return [
        job.id,
        job.kind,
        job.priority,
        job.status,
        job.attempts,
        _when(job.created_at),
        job.error.code if job.error else "",
    ]


def _submit(args: argparse.Namespace) -> int:
    path = Path(args.file)
    jobs = load_jobs(path)
    if not args.no_plan:
        for job in jobs:
            if job.kind == "training_run":
                _plan_training(job, str(path))
    sched = _scheduler()
    try:
        stored = sched.enqueue_many(jobs)
    finally:
        sched.close()
    if args.json:
        print_json([codec.to_builtins(j) for j in stored])
    else:
        for job in stored:
            sys.stdout.write(f"{job.id}\n")
    return 0


def _list(args: argparse.Namespace) -> int:
    from crucible_core._options import check_count

    if args.limit is not None:
        check_count("--limit", args.limit, minimum=0)
    sched = _scheduler()
    try:
        jobs = sched.list(status=args.status, kind=args.kind, limit=args.limit)
    finally:
        sched.close()
    if args.json:
        print_json([codec.to_builtins(j) for j in jobs])
        return 0
    if not jobs:
        sys.stderr.write("no jobs" + (f" with status {args.status}" if args.status else "") + "\n")
        return 0
    print_table(
        ["id", "kind", "priority", "status", "attempts", "created", "error"],
        [_row(j) for j in jobs],
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    from crucible_core.records.paths import run_dir

    sched = _scheduler()
    try:
        job = sched.get(args.id)
        history = sched.history(args.id)
        checkpoint = sched.last_checkpoint(args.id)
        timing = sched.timing(args.id)
        now = sched.now()
    finally:
        sched.close()
    directory = run_dir(job.id)
    if checkpoint is None and job.kind == "training_run":
        checkpoint = _training_resume_point(directory)
    if args.json:
        print_json(
            {
                "job": codec.to_builtins(job),
                "history": [t.__dict__ for t in history],
                "checkpoint": codec.to_builtins(checkpoint) if checkpoint else None,
                "timing": timing.__dict__,
                "run_dir": str(directory),
            }
        )
        return 0
    out = sys.stdout
    out.write(f"job       {job.id}\n")
    out.write(f"kind      {job.kind} ({job.priority}, tenant {job.tenant_id})\n")
    out.write(f"status    {job.status}, attempt {job.attempts}")
    out.write(f" of {job.constraints.retry_policy.max_attempts}\n")
    if timing.lease_owner:
        out.write(f"lease     {timing.lease_owner}")
        out.write(" (cancel requested)\n" if timing.cancel_requested else "\n")
    if job.status == "queued" and timing.available_at > now:
        out.write(f"next try  in {timing.available_at - now:.1f} s\n")
    if job.constraints.depends_on:
        out.write(f"needs     {', '.join(job.constraints.depends_on)}\n")
    out.write(f"created   {_when(job.created_at)}\n")
    if job.finished_at:
        out.write(f"finished  {_when(job.finished_at)}\n")
    if job.error:
        out.write(f"error     [{job.error.code}] {job.error.message}\n")
        if job.error.hint:
            out.write(f"  hint    {job.error.hint}\n")
    if checkpoint:
        out.write(f"resume    {checkpoint.uri} (step {checkpoint.step})\n")
    if job.result is not None:
        text = msgspec.json.encode(job.result).decode()
        out.write(f"result    {text if len(text) < 200 else text[:197] + '...'}\n")
    out.write(f"run dir   {directory}{'' if directory.exists() else ' (none yet)'}\n")
    out.write("history\n")
    for t in history:
        at = datetime.fromtimestamp(t.at).strftime("%H:%M:%S.%f")[:-3]
        note = f"  ({t.note})" if t.note else ""
        who = f" by {t.worker}" if t.worker else ""
        out.write(f"  {at}  {t.from_status or '-'} -> {t.to_status}{who}{note}\n")
    return 0


def _training_resume_point(directory: Path) -> CheckpointRef | None:
    """Where a training run continues from: its ``trainer_state.json`` (the one record)."""
    from crucible_core.errors import CrucibleError
    from crucible_core.train.state import read_loop_state

    try:
        state = read_loop_state(directory)
    except CrucibleError:
        return None
    return state.checkpoints[-1].ref if state.checkpoints else None


def _cancel(args: argparse.Namespace) -> int:
    sched = _scheduler()
    try:
        job = sched.cancel(args.id)
    finally:
        sched.close()
    if job.status == "running":
        sys.stdout.write(f"{job.id}: cancellation requested; it stops at its next safe point\n")
    else:
        sys.stdout.write(f"{job.id}: {job.status}\n")
    return 0


def _retry(args: argparse.Namespace) -> int:
    sched = _scheduler()
    try:
        job = sched.retry(args.id)
    finally:
        sched.close()
    sys.stdout.write(f"{job.id}: {job.status}\n")
    return 0


def _recover(args: argparse.Namespace) -> int:
    from crucible_core.queue.dbrepair import repair
    from crucible_core.records.paths import db_path

    path = Path(args.db) if args.db else db_path()
    report = repair(path)
    if not report.problems:
        sys.stdout.write(f"{path}: quick_check ok; nothing to repair\n")
        return 0
    sys.stdout.write(f"{path}: damaged ({len(report.problems)} problem(s) found), rebuilt\n")
    for name, count in report.rows.items():
        sys.stdout.write(f"  {name:<12} {count} row(s) kept\n")
    sys.stdout.write(f"the damaged file is kept as {report.backup}\n")
    return 0


class _JobsCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
        p = sub.add_parser(
            "submit",
            help="submit the jobs a file describes; print their ids",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("file", metavar="FILE", help="a Job, a list of jobs, a TrainingJob...")
        p.add_argument("--json", action="store_true", help="print the stored jobs as JSON")
        p.add_argument("--no-plan", action="store_true", help="do not plan training jobs first")
        p.set_defaults(_action=_submit)
        p = sub.add_parser("list", help="list jobs, oldest first")
        p.add_argument("--status", help="only jobs in this status (pending, queued, running...)")
        p.add_argument("--kind", help="only jobs of this kind")
        p.add_argument("--limit", type=int, help="at most this many")
        p.add_argument("--json", action="store_true", help="print JSON on stdout")
        p.set_defaults(_action=_list)
        p = sub.add_parser("show", help="one job: status, error, attempts, history")
        p.add_argument("id", metavar="ID")
        p.add_argument("--json", action="store_true", help="print JSON on stdout")
        p.set_defaults(_action=_show)
        p = sub.add_parser("cancel", help="cancel a waiting job, or ask a running one to stop")
        p.add_argument("id", metavar="ID")
        p.set_defaults(_action=_cancel)
        p = sub.add_parser("retry", help="requeue a failed, dead or cancelled job")
        p.add_argument("id", metavar="ID")
        p.set_defaults(_action=_retry)
        p = sub.add_parser(
            "recover", help="check the queue database and rebuild it if it is damaged"
        )
        p.add_argument("--db", metavar="PATH", help="the database file (default: $CRUCIBLE_HOME)")
        p.set_defaults(_action=_recover)

    def run(self, args: argparse.Namespace) -> int:
        if isinstance(getattr(args, "id", None), str):  # show, cancel, retry
            check_id(args.id, what="job id")  # '/', '..', 5,000 characters: exit 2, not 4
        return int(args._action(args))


command = _JobsCommand()

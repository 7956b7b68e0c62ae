"""``crucible train FILE`` and ``crucible resume RUN``.

Stopping: the first SIGINT (Ctrl-C) or SIGTERM asks the training loop to stop
at the next step boundary; it finishes the step in flight, saves a state
checkpoint, marks the run ``interrupted``, prints the ``crucible resume <id>``
line and exits 130. A second signal exits at once (130) without a new
checkpoint: the run then shows as ``crashed`` and resumes from its last one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from types import FrameType
from typing import Any, cast

import msgspec

from crucible_core.cli.output import print_json
from crucible_core.cli.plan_cmd import format_plan, print_problems
from crucible_core.cli.runref import find_run
from crucible_core.errors import EXIT_INTERRUPTED, Cancelled, ConfigError
from crucible_core.ids import check_id
from crucible_core.ir.codec import convert, decode_file, to_builtins
from crucible_core.ir.training import Budget, TrainingJob
from crucible_core.pipeline.cancel import CancelFlag
from crucible_core.records import paths
from crucible_core.records.events import Event
from crucible_core.records.runstatus import INTERRUPT_REASONS
from crucible_core.train.loop import LoopState
from crucible_core.train.plan import Plan, Planned, plan_run
from crucible_core.train.run import new_job_id, run_training
from crucible_core.train.state import STATE_FILE, read_loop_state
from crucible_core.train.steps import TrainingOutcome

__all__ = ["command", "resume_command"]


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")


def _summary(plan: Plan) -> dict[str, Any]:
    return {
        "tokens": plan.tokens_to_train,
        "steps": plan.steps,
        "cost": plan.cost,
        "currency": plan.currency,
        "duration_s": plan.duration_s,
        "duration_basis": plan.duration_basis,
    }


@contextlib.contextmanager
def _stop_on_signals(flag: CancelFlag, run: str) -> Generator[None]:
    """SIGINT/SIGTERM: first one sets ``flag`` (stop at a step boundary), second exits now."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    count = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            sys.stderr.write(
                f"\ncrucible: {name}: stopping run {run} after the current step and saving a "
                "checkpoint (signal again to exit at once)\n"
            )
            sys.stderr.flush()
            flag.set("interrupted")
            return
        sys.stderr.write(
            f"\ncrucible: {name} again: exiting now without a new checkpoint; continue from the "
            f"last one with: crucible resume {run}\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupted(run: str, exc: Cancelled, args: argparse.Namespace) -> int:
    """Report an interrupted run: where it stopped and the exact command that continues it."""
    resumable = (paths.run_dir(run) / STATE_FILE).is_file()
    step = exc.details.get("step")
    if resumable:
        line = f"crucible resume {run}"
        message = (
            f"interrupted after step {step}; checkpoint saved. Continue with:  {line}\n"
            if step is not None
            else f"interrupted; continue from the last checkpoint with:  {line}\n"
        )
    else:
        line = None
        message = "interrupted before the first checkpoint: nothing to resume, train again\n"
    if args.json:
        print_json({"run": run, "status": "interrupted", "step": step, "resume": line})
    sys.stderr.write(message)
    return EXIT_INTERRUPTED


def _execute(
    job: TrainingJob,
    args: argparse.Namespace,
    *,
    job_id: str | None = None,
    resume: LoopState | None = None,
    planned: Planned | None = None,
) -> int:
    from crucible_core.plugins import get_host
    from crucible_core.records.events import EventBus

    host = get_host()
    plan = planned.plan if planned is not None else None
    run = job_id or job.job_id or new_job_id()
    flag = CancelFlag()
    progress: Any = None
    with EventBus(host=host) as bus, _stop_on_signals(flag, run):
        if not args.json and not args.no_progress:
            from crucible_core.cli.progress import ProgressSubscriber

            progress = ProgressSubscriber()
            bus.subscribe(progress, name="progress")
        if resume is not None and not args.json:
            # The recipe verifies the checkpoints' sha256 before loading and may fall back
            # to an earlier one; its ``train.resume`` event names the step really used.
            bus.subscribe(_resume_announcer(run), name="resume-announcer")
        try:
            outcome = run_training(
                job,
                job_id=run,
                host=host,
                bus=bus,
                cancel=flag,
                resume=resume,
                plan=_summary(plan) if plan is not None else None,
                prepared=planned.prepared if planned is not None else None,
                backend=planned.backend if planned is not None else None,
            )
        except Cancelled as exc:
            if progress is not None:
                progress.close()
            bus.drain()
            if exc.details.get("reason") in INTERRUPT_REASONS or flag.is_set():
                return _interrupted(run, exc, args)
            raise
        except BaseException:
            if progress is not None:
                progress.close()
            raise
        finally:
            bus.drain()
        if progress is not None:
            progress.close()
    _report(outcome, plan, args)
    return 0


def _resume_announcer(run: str) -> Callable[[Event], None]:
    def announce(event: Event) -> None:
        if event.kind == "train.resume":
            step = event.step if event.step is not None else event.data.get("step")
            sys.stdout.write(f"resuming {run} from step {step}\n")
            sys.stdout.flush()

    return announce


def _report(outcome: TrainingOutcome, plan: Plan | None, args: argparse.Namespace) -> None:
    if args.json:
        print_json(
            {"outcome": msgspec.to_builtins(outcome), "plan": _summary(plan) if plan else None}
        )
        return
    w = sys.stdout.write
    w(f"run        {outcome.job_id}  ({outcome.run_dir})\n")
    if outcome.initial_loss is not None and outcome.final_loss is not None:
        w(f"loss       initial {outcome.initial_loss:.4f} -> final {outcome.final_loss:.4f}\n")
    w(f"steps      {outcome.steps}/{outcome.total_steps}")
    w(f"  ({outcome.stopped})\n" if outcome.stopped else "\n")
    if outcome.evaluation:
        ev = outcome.evaluation
        line = f"eval       {ev.get('split')}: loss {ev.get('eval_loss', float('nan')):.4f}"
        if "eval_reward" in ev:  # RL: greedy completions of held-out prompts, scored
            line = f"eval       {ev.get('split')}: mean reward {ev['eval_reward']:.3f} (greedy)"
        elif "eval_accuracy" in ev:  # preference pairs (DPO)
            line += f", preference accuracy {ev['eval_accuracy']:.2f}"
            line += f", reward margin {ev.get('eval_margin', float('nan')):.3f}"
        w(line + "\n")
        w(_format_agreement(ev.get("agreement")))
        w(format_sampled(ev.get("sampled")))
    est = _summary(plan) if plan else {}
    tokens_est = f" (planned {est['tokens']})" if est.get("tokens") is not None else ""
    w(f"tokens     {outcome.tokens}{tokens_est}\n")
    cost_est = f" (planned {est['cost']:.4f})" if est.get("cost") is not None else ""
    w(f"cost       {outcome.cost:.4f} {est.get('currency', 'USD')}{cost_est}\n")
    dur = est.get("duration_s")
    w(f"time       {outcome.elapsed_s:.1f} s" + (f" (planned {dur:.1f} s)\n" if dur else "\n"))
    if outcome.sampler_checkpoint is not None:
        w(f"weights    {outcome.sampler_checkpoint.uri}\n")
    held_out = _held_out_input(outcome.evaluation.get("sampled"))
    prompt = held_out or "What is 12 plus 7?"
    quoted = f'"{prompt}"' if not set(prompt) & set('"$`\\!') else shlex.quote(prompt)
    # Greedy, as the evaluation sampled: the command then writes the answer shown above.
    greedy = " --temperature 0" if held_out else ""
    w(f"\nSample from it:  crucible sample {outcome.job_id} --prompt {quoted} --chat{greedy}\n")


def _format_agreement(agreement: Any) -> str:
    """The report line of a distillation's held-out agreement with its teacher."""
    if not isinstance(agreement, dict):
        return ""
    data = cast(dict[str, Any], agreement)
    after = cast(dict[str, float], data.get("after") or {})
    if not after:
        return ""
    before = cast(dict[str, float], data.get("before") or {})
    parts: list[str] = []
    for name in ("token_match", "exact_match"):
        was = f"{before[name]:.2f} before training -> " if name in before else ""
        parts.append(f"{name} {was}{after.get(name, float('nan')):.2f} after")
    count = int(after.get("examples", 0))
    return f"teacher    agreement on {count} {data.get('split')} prompts: {'; '.join(parts)}\n"


def format_sampled(sampled: Any) -> str:
    """The report lines of a sampled evaluation: each score before -> after, and examples."""
    if not isinstance(sampled, dict):
        return ""
    data = cast(dict[str, Any], sampled)
    after = cast(dict[str, Any], data.get("after") or {})
    before = cast(dict[str, Any], data.get("before") or {})
    scores = cast(dict[str, float], after.get("scores") or {})
    was = cast(dict[str, float], before.get("scores") or {})
    lines: list[str] = []
    for name, score in scores.items():
        start = f"{was[name]:.2f} before training -> " if name in was else ""
        lines.append(
            f"           {name} {start}{score:.2f} after, "
            f"on {after.get('examples')} held-out rows (never trained on)\n"
        )
        during = cast(list[dict[str, Any]], data.get("during") or [])
        if during:
            points = ", ".join(
                f"{cast(dict[str, float], p['scores'])[name]:.2f} at step {p['step']}"
                for p in during
                if name in p["scores"]
            )
            lines.append(f"           {name} during training: {points}\n")
    for example in cast(list[dict[str, str]], after.get("samples") or []):
        mark = (
            "right"
            if example["output"] == example["reference"]
            else "expected " + repr(example["reference"])
        )
        lines.append(f"sample     {example['input']!r} -> {example['output']!r}  ({mark})\n")
    return "".join(lines)


def _held_out_input(sampled: Any) -> str | None:
    if not isinstance(sampled, dict):
        return None
    after = cast(dict[str, Any], cast(dict[str, Any], sampled).get("after") or {})
    samples = cast(list[dict[str, str]], after.get("samples") or [])
    return samples[0]["input"] if samples and samples[0].get("input") else None


class _TrainCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Plan the job (refusing anything its backend cannot do), then run it: load and "
            "tokenize the data, train with a progress bar, evaluate, save the weights. The run "
            "lands in $CRUCIBLE_HOME/runs/<job_id>/ (manifest.json, telemetry.jsonl, "
            "checkpoints)."
        )
        parser.add_argument("file", type=Path, help="a TrainingJob (.toml or .json)")
        parser.add_argument("--backend", help="run on this backend instead of the job's")
        parser.add_argument("--job-id", help="the run's id (default: the job's, or a new one)")
        _add_common(parser)

    def run(self, args: argparse.Namespace) -> int:
        if args.job_id is not None:
            check_id(args.job_id, what="--job-id")
        job = decode_file(args.file, TrainingJob)
        if args.backend:
            ref = msgspec.structs.replace(job.backend_ref, name=args.backend)
            job = msgspec.structs.replace(job, backend=ref)
        # The same checks as `crucible plan`; the duration is not measured here (the
        # progress bar shows the real pace), to keep start-up short.
        planned = plan_run(job, measure=False)
        plan = planned.plan
        if not plan.ok:
            if args.json:
                print_json(msgspec.to_builtins(plan))
            print_problems(plan)
            return 2
        if not args.json:
            sys.stdout.write(format_plan(plan) + "\n")
        return _execute(job, args, job_id=args.job_id, planned=planned)


class _ResumeCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Continue a run from its newest checkpoint: weights, optimizer state, step, data "
            "position and random state are restored, so the loss curve continues exactly as "
            "an uninterrupted run's. Budget options raise the run's limits."
        )
        parser.add_argument("run", help="a run id or run directory")
        parser.add_argument("--max-steps", type=int, help="train up to this many steps in all")
        parser.add_argument("--max-tokens", type=int, help="new token budget")
        parser.add_argument("--max-cost", type=float, help="new cost budget")
        parser.add_argument("--max-wall-time", type=float, help="new wall-time budget (seconds)")
        _add_common(parser)

    def run(self, args: argparse.Namespace) -> int:
        run_dir, manifest = find_run(args.run)
        raw = manifest.get("training_job")
        if not isinstance(raw, dict):
            raise ConfigError(f"{run_dir}: the manifest records no training job to resume")
        job = convert(cast(dict[str, Any], raw), TrainingJob)
        state = read_loop_state(run_dir)
        budget = job.budget
        changes: dict[str, Any] = {}
        for name in ("max_tokens", "max_cost", "max_wall_time"):
            value = getattr(args, name)
            if value is not None:
                changes[name] = value
        if changes:
            budget = convert({**msgspec.to_builtins(budget), **changes}, Budget)
        learning = job.learning_config
        if args.max_steps is not None:
            if args.max_steps <= state.step:
                raise ConfigError(
                    f"--max-steps {args.max_steps}: run {run_dir.name} is already at step "
                    f"{state.step}",
                    hint=f"give a total above {state.step}, or omit --max-steps",
                )
            learning = msgspec.structs.replace(learning, max_steps=args.max_steps)
        job = msgspec.structs.replace(job, budget=budget, learning_config=learning)
        # Validate the changed job like a file (struct replace skips the checks) before it
        # is written into the manifest: a bad value must never break later resumes.
        job = convert(to_builtins(job), TrainingJob)
        return _execute(job, args, job_id=run_dir.name, resume=state)


command = _TrainCommand()
resume_command = _ResumeCommand()

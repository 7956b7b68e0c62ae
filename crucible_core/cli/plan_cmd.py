"""``crucible plan FILE``: what a training job will do, or every reason it cannot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from crucible_core.cli.output import print_json
from crucible_core.ir.codec import decode_file
from crucible_core.ir.training import TrainingJob
from crucible_core.train.plan import Plan, make_plan

__all__ = ["command", "format_plan", "print_problems"]


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _duration(s: float | None) -> str:
    if s is None:
        return "unknown"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def format_plan(plan: Plan) -> str:
    """The human-readable plan."""
    model = f"{plan.model} (from {plan.model_path})" if plan.model_path else plan.model
    lines = [f"backend   {plan.backend} (plugin {plan.plugin})", f"model     {model}"]
    if plan.dataset:
        lines.append(f"dataset   {plan.dataset}")
    lines.append("stages    " + " -> ".join(s.split(" ")[0] for s in plan.stages))
    if plan.rows is not None:
        lines.append(
            f"data      {plan.rows} training rows, {plan.validation_rows} validation, "
            f"{plan.skipped_rows} skipped; {plan.tokens_per_epoch} tokens per epoch "
            f"(tokenizer {plan.tokenizer}, template {plan.template})"
        )
    if plan.steps is not None:
        lines.append(f"steps     {plan.steps} optimizer steps, {plan.tokens_to_train} tokens")
    if plan.sampling_tokens is not None:
        lines.append(f"sampling  {plan.sampling_tokens} tokens sampled or scored beside training")
    listed = sum(c.kind == "state" for c in plan.checkpoints)
    hidden = (plan.state_checkpoints or 0) - listed
    for i, c in enumerate(plan.checkpoints):
        if hidden > 0 and i == listed // 2:
            lines.append(f"checkpoint ... {hidden} more state checkpoints ...")
        lines.append(f"checkpoint step {c.step} ({c.kind}), {_size(c.size_bytes)}")
    if plan.cost is not None:
        lines.append(f"cost      {plan.cost:.4f} {plan.currency} (estimated)")
    if plan.duration_s is not None or plan.duration_basis is not None:
        basis = f" ({plan.duration_basis} throughput)" if plan.duration_basis else ""
        lines.append(f"duration  {_duration(plan.duration_s)}{basis}")
    lines.extend(f"note      {n}" for n in plan.notes)
    return "\n".join(lines) + "\n"


def print_problems(plan: Plan) -> None:
    """Every problem on stderr, each with its field, what is supported, and a hint."""
    sys.stderr.write(f"error: the job cannot run: {len(plan.problems)} problem(s)\n")
    for p in plan.problems:
        sys.stderr.write(f"  {p.field}: {p.message}\n")
        if p.hint:
            sys.stderr.write(f"    hint: {p.hint}\n")


class _PlanCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Resolve the backend and plugins, check every setting of the job against the "
            "backend's capabilities (all problems at once), and show the stages, data, steps, "
            "checkpoints, cost and duration. Exit 0 if it can run, 2 if not."
        )
        parser.add_argument("file", type=Path, help="a TrainingJob (.toml or .json)")
        parser.add_argument("--backend", help="plan for this backend instead of the job's")
        parser.add_argument("--json", action="store_true", help="print the plan as JSON")
        parser.add_argument(
            "--no-measure",
            action="store_true",
            help="do not time a training step to estimate the duration",
        )

    def run(self, args: argparse.Namespace) -> int:
        job = decode_file(args.file, TrainingJob)
        plan = make_plan(job, backend_name=args.backend, measure=not args.no_measure)
        if args.json:
            print_json(msgspec.to_builtins(plan))
        elif plan.ok:
            sys.stdout.write(format_plan(plan))
        if not plan.ok and not args.json:
            print_problems(plan)
        return 0 if plan.ok else 2


command = _PlanCommand()

"""``crucible eval`` and ``crucible eval-compare``: the harness's commands.

Both import numpy/scipy only when they run (``crucible --help`` stays cheap).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from crucible_core.errors import ConfigError

__all__ = ["EvalCommand", "EvalCompareCommand", "find_eval"]


def _metrics(text: str) -> list[str]:
    names = [m.strip() for part in text for m in part.split(",") if m.strip()]
    if not names:
        raise ConfigError("--metric: name at least one metric (e.g. --metric exact_match)")
    return list(dict.fromkeys(names))


class EvalCommand:
    """``crucible eval TARGET --dataset URI --metric NAME[,NAME]``."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Score a run's weights (or a base model) on a dataset: greedy samples of prompts "
            "rendered with the run's template, registered metrics, bootstrap confidence "
            "intervals. mc_logprob scores multiple choice by option log-probability; "
            "pass_at_k runs sampled code in a sandbox (--samples K). Writes eval-<id>.json in "
            "the run directory and a lineage edge evaluated_on to the dataset's content hash."
        )
        parser.add_argument(
            "target",
            metavar="TARGET",
            help="run id, run dir, checkpoint dir, models:/NAME@ALIAS; with --backend, a model",
        )
        parser.add_argument(
            "--dataset", required=True, help="dataset URI (sample:gsm8k, path.jsonl, ...)"
        )
        parser.add_argument(
            "--metric",
            action="append",
            required=True,
            help="metric name(s), comma separated or repeated (exact_match, gsm8k_accuracy...)",
        )
        parser.add_argument("--n", type=int, help="score at most N examples")
        parser.add_argument(
            "--preset", help="row format of the dataset file (gsm8k, mmlu, alpaca...)"
        )
        parser.add_argument(
            "--base",
            action="store_true",
            help="evaluate the run's base model (its weights before training)",
        )
        parser.add_argument("--backend", help="TARGET is a model name on this backend")
        parser.add_argument("--template", help="chat template (default: the run's)")
        parser.add_argument(
            "--extract",
            default="auto",
            choices=["auto", "number", "choice", "none"],
            help="answer extraction before scoring (auto: numbers for GSM8K-style data, "
            "letters for MMLU-style)",
        )
        parser.add_argument(
            "--samples",
            type=int,
            default=1,
            metavar="K",
            help="pass_at_k: completions sampled per problem (reports pass@1 and pass@K)",
        )
        parser.add_argument(
            "--temperature",
            type=float,
            help="pass_at_k: sampling temperature (default 0.8 with --samples > 1, else greedy)",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=10.0,
            help="pass_at_k: seconds one program may run before it is killed (a failure)",
        )
        parser.add_argument("--confidence", type=float, default=0.95)
        parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def run(self, args: argparse.Namespace) -> int:
        import msgspec

        from crucible_core.cli.output import print_json, print_table
        from crucible_harness.evaluate import eval_path, evaluate, resolve_target

        target = resolve_target(
            args.target, base=args.base, backend=args.backend, template=args.template
        )
        result = evaluate(
            target,
            args.dataset,
            _metrics(args.metric),
            n=args.n,
            preset=args.preset,
            extract=args.extract,
            confidence=args.confidence,
            seed=args.seed,
            samples=args.samples,
            temperature=args.temperature,
            timeout=args.timeout,
        )
        path = eval_path(result, target)
        if args.json:
            print_json({**msgspec.to_builtins(result), "path": str(path)})
            return 0
        pct = f"{round(args.confidence * 100)}% CI"
        print_table(
            ["metric", "score", "mean", pct, "examples"],
            [
                [
                    m.name,
                    f"{m.score:.4g}",
                    f"{m.mean:.4g}",
                    f"[{m.low:.4g}, {m.high:.4g}]",
                    len(result.examples),
                ]
                for m in result.metrics
            ],
        )
        sys.stdout.write(f"{result.eval_id}: {path}\n")
        return 0


def find_eval(ref: str) -> Path:
    """An evaluation file: a path, or an eval id searched in run directories and evals/."""
    given = Path(ref).expanduser()
    if given.is_file():
        return given
    from crucible_core.errors import NotFound
    from crucible_core.ids import is_valid_id
    from crucible_core.records import paths

    if is_valid_id(ref):
        home = paths.crucible_home()
        for candidate in [home / "evals" / f"{ref}.json", *home.glob(f"runs/*/{ref}.json")]:
            if candidate.is_file():
                return candidate
    raise NotFound(f"no evaluation {ref!r}", hint="pass an eval-<id>.json path or an eval id")


class EvalCompareCommand:
    """``crucible eval-compare A B``: is the difference between two evaluations significant?"""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Compare two evaluations (eval ids or eval-<id>.json files) metric by metric: "
            "the test chosen from the data (and why), Holm-adjusted p-values, effect sizes, "
            "bootstrap intervals. Prints or writes a Markdown report."
        )
        parser.add_argument("a", metavar="A")
        parser.add_argument("b", metavar="B")
        parser.add_argument("--metric", action="append", help="only these metrics")
        parser.add_argument("--alpha", type=float, default=0.05)
        parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
        parser.add_argument("--out", type=Path, help="write the report here")
        parser.add_argument(
            "--format",
            choices=["markdown", "html", "latex"],
            default="markdown",
            help="markdown: the full report; html: the same as one self-contained page with "
            "a plot; latex: the scores table (booktabs tabular)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from crucible_harness.evaluate import read_eval
        from crucible_harness.report import latex_table, markdown_report

        files = (find_eval(args.a), find_eval(args.b))
        a, b = read_eval(files[0]), read_eval(files[1])
        manifests = _manifests(files)
        metrics = _metrics(args.metric) if args.metric else None
        if args.format == "latex":
            text = latex_table(a, b, metrics=metrics, alpha=args.alpha, seed=args.seed)
        elif args.format == "html":
            from crucible_harness.htmlreport import html_report

            text = html_report(
                a,
                b,
                files=files,
                manifests=manifests,
                metrics=metrics,
                alpha=args.alpha,
                seed=args.seed,
            )
        else:
            text = markdown_report(
                a,
                b,
                files=files,
                manifests=manifests,
                metrics=metrics,
                alpha=args.alpha,
                seed=args.seed,
            )
        if args.out is not None:
            args.out.write_text(text, encoding="utf-8")
            sys.stdout.write(f"wrote {args.out}\n")
        else:
            sys.stdout.write(text)
        return 0


def _manifests(files: Any) -> list[Path]:
    from crucible_core.records.artifacts import MANIFEST_FILE

    out: list[Path] = []
    for f in files:
        m = Path(f).parent / MANIFEST_FILE
        if m.is_file() and m not in out:
            out.append(m)
    return out


class ExperimentCommand:
    """``crucible experiment validate|run|status|report FILE``: a grid of training runs."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Experiments over a parameter grid of training runs: validate the grid against "
            "TrainingJob, submit each cell (a training run, then its evaluation) to the "
            "durable queue and run them (crucible worker processes, or --workers N here; "
            "submitting again skips cells already queued or finished), show their status, "
            "write the reports. Once every cell has finished, run and status check the "
            "quality targets and exit 1 with a table of the missed ones."
        )
        parser.add_argument("action", choices=["validate", "run", "status", "report"])
        parser.add_argument("file", type=Path, metavar="FILE", help="Experiment file")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="run: list the cells with crucible plan's estimates, submit nothing",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=0,
            metavar="N",
            help="run: run up to N cells at a time in this process and wait for all "
            "(0: leave them to crucible worker processes)",
        )
        parser.add_argument(
            "--wait",
            action="store_true",
            help="run: wait until every cell has finished (implied by --workers)",
        )
        parser.add_argument(
            "--executor",
            metavar="NAME",
            help="run: run the cells through this executor (e.g. ray) instead of threads",
        )
        parser.add_argument(
            "--address", metavar="ADDR", help="run: where the executor runs (ray: local, auto...)"
        )
        parser.add_argument(
            "--lease", type=float, default=30.0, metavar="S", help="run: lease of a cell (s)"
        )
        parser.add_argument(
            "--out",
            type=Path,
            metavar="DIR",
            help="report: directory for report.md, report.html, report.tex "
            "(default $CRUCIBLE_HOME/experiments/<id>)",
        )
        parser.add_argument(
            "--open", action="store_true", help="report: open the HTML report in a browser"
        )
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from crucible_harness.experiment import load

        loaded = load(args.file)
        for note in loaded.notes:
            sys.stderr.write(f"note: {note}\n")
        if args.action != "run":
            for flag in ("dry_run", "wait", "executor", "address"):
                if getattr(args, flag):
                    raise ConfigError(f"--{flag.replace('_', '-')} applies to run only")
            if args.workers:
                raise ConfigError("--workers applies to run only")
        if args.action != "report" and (args.out is not None or args.open):
            raise ConfigError("--out and --open apply to report only")
        if args.action == "validate":
            return _validate(loaded, args)
        if args.action == "report":
            return _report(loaded, args)
        if args.action == "run" and args.dry_run:
            return _dry_run(loaded, args)
        if args.action == "run":
            return _run(loaded, args)
        return _status_cmd(loaded, args)


def _validate(loaded: Any, args: argparse.Namespace) -> int:
    from crucible_core.cli.output import print_json, print_table

    rows = [
        {"cell": c.cell_id, "overrides": c.overrides, "seed": c.seed, "repeat": c.repeat}
        for c in loaded.cells
    ]
    if args.json:
        print_json({"experiment": loaded.experiment.id, "cells": rows})
        return 0
    _print_rows(print_table, rows)
    return 0


def _print_rows(print_table: Any, rows: list[dict[str, Any]]) -> None:
    headers = list(rows[0]) if rows else ["cell"]
    print_table(headers, [[_shown(r[h]) for h in headers] for r in rows])


def _dry_run(loaded: Any, args: argparse.Namespace) -> int:
    from crucible_core.cli.output import print_json, print_table
    from crucible_harness.experiment import plan_cells, within_budget

    plans = plan_cells(loaded)
    inside = {c.cell_id for c in within_budget(loaded, plans)}
    rows = [
        {"cell": p.cell.cell_id, "overrides": p.cell.overrides, "seed": p.cell.seed,
         "steps": p.steps, "cost": p.cost, "duration_s": p.duration_s,
         "within_budget": p.cell.cell_id in inside, "problems": "; ".join(p.problems) or None}
        for p in plans
    ]  # fmt: skip
    refused = [p for p in plans if not p.ok]
    if refused:
        raise ConfigError(
            f"{args.file}: {len(refused)} cell(s) would be refused: "
            + "; ".join(f"{p.cell.cell_id}: {p.problems[0]}" for p in refused[:3]),
            hint="crucible plan on the base job shows every problem",
        )
    total_cost = sum(p.cost or 0.0 for p in plans)
    total_s = sum(p.duration_s or 0.0 for p in plans)
    if args.json:
        print_json(
            {
                "experiment": loaded.experiment.id,
                "cells": rows,
                "estimate": {"cost": total_cost, "duration_s": total_s},
            }
        )
        return 0
    _print_rows(print_table, rows)
    sys.stdout.write(
        f"{len(rows)} cell(s); estimated cost {total_cost:.4g}, "
        f"{total_s:.1f} s of training run one after another (crucible plan)\n"
    )
    if len(inside) < len(rows):
        sys.stdout.write(f"{len(rows) - len(inside)} cell(s) exceed budget.max_cost\n")
    return 0


def _run(loaded: Any, args: argparse.Namespace) -> int:
    from crucible_core._options import check_count, check_seconds
    from crucible_core.cli.worker_cmd import _executor  # pyright: ignore[reportPrivateUsage]
    from crucible_core.queue.scheduler import Scheduler
    from crucible_harness.experiment import run

    check_count("--workers", args.workers, minimum=0)
    check_seconds("--lease", args.lease)
    if args.executor is not None and args.workers < 1:
        raise ConfigError(
            "--executor runs cells in this process: add --workers N",
            hint=f"e.g. crucible experiment run {args.file} --executor {args.executor} --workers 2",
        )
    executor = _executor(args.executor, args.address)
    sched = Scheduler()
    try:
        outcome = run(
            loaded,
            sched,
            workers=args.workers,
            executor=executor,
            wait=True if args.wait else None,
            lease_s=args.lease,
        )
    finally:
        sched.close()
        if executor is not None:
            executor.shutdown(wait=False)
    submitted = set(outcome.submitted)
    rows = [
        {"cell": s.cell.cell_id, "overrides": s.cell.overrides, "seed": s.cell.seed,
         "status": s.status, "new": s.cell.cell_id in submitted}
        for s in outcome.statuses
    ]  # fmt: skip
    missed = _missed(loaded, outcome.statuses) if outcome.waited else []
    doc: dict[str, Any] = {
        "experiment": loaded.experiment.id,
        "cells": rows,
        "over_budget": outcome.over_budget,
        "stopped_by_time": outcome.stopped_by_time,
    }
    if outcome.waited:
        doc["missed"] = missed
    return _finish(doc, rows, missed, args, waited=outcome.waited)


def _missed(loaded: Any, statuses: Any) -> list[dict[str, Any]]:
    from crucible_harness.experiment import FINAL, missed_targets

    if not all(s.status in FINAL for s in statuses):
        return []
    return [
        {"cell": m.cell_id, "target": m.target, "observed": m.observed}
        for m in missed_targets(loaded, statuses)
    ]


def _status_cmd(loaded: Any, args: argparse.Namespace) -> int:
    from crucible_core.queue.scheduler import Scheduler
    from crucible_harness.experiment import statuses as cell_statuses

    sched = Scheduler()
    try:
        statuses = cell_statuses(loaded, sched)
    finally:
        sched.close()
    rows = [
        {"cell": s.cell.cell_id, "overrides": s.cell.overrides, "seed": s.cell.seed,
         "status": s.status}
        for s in statuses
    ]  # fmt: skip
    missed = _missed(loaded, statuses)
    doc = {"experiment": loaded.experiment.id, "cells": rows, "missed": missed}
    return _finish(doc, rows, missed, args, waited=None)


def _finish(
    doc: dict[str, Any],
    rows: list[dict[str, Any]],
    missed: list[dict[str, Any]],
    args: argparse.Namespace,
    *,
    waited: bool | None,
) -> int:
    from crucible_core.cli.output import print_json, print_table

    if args.json:
        print_json(doc)
        return 1 if missed else 0
    _print_rows(print_table, rows)
    for key, what in (("over_budget", "over budget.max_cost, not submitted"),
                      ("stopped_by_time", "cancelled: budget.max_wall_time spent")):  # fmt: skip
        if doc.get(key):
            sys.stdout.write(f"{len(doc[key])} cell(s) {what}\n")
    if missed:
        sys.stdout.write("\nmissed quality targets:\n")
        print_table(
            ["cell", "target", "observed"],
            [
                [
                    m["cell"],
                    m["target"],
                    _shown("not recorded" if m["observed"] is None else m["observed"]),
                ]
                for m in missed
            ],
        )
        return 1
    if waited is False:
        new = sum(1 for r in rows if r.get("new"))
        sys.stdout.write(
            f"{new} cell(s) submitted, {len(rows) - new} already in the queue; "
            "run them with: crucible worker (or run again with --workers N)\n"
        )
    return 0


def _report(loaded: Any, args: argparse.Namespace) -> int:
    from crucible_core.records import paths
    from crucible_harness.expreport import write_reports

    out = args.out or paths.crucible_home() / "experiments" / loaded.experiment.id
    written = write_reports(loaded, out)
    if args.json:
        from crucible_core.cli.output import print_json

        print_json({k: str(v) for k, v in written.items()})
    else:
        for path in written.values():
            sys.stdout.write(f"wrote {path}\n")
    if args.open:
        import webbrowser

        webbrowser.open(written["html"].resolve().as_uri())
    return 0


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "(base)"
    return str(value)

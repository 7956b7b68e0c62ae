"""Reports over a whole experiment: Markdown, self-contained HTML with plots, LaTeX tables.

What every report holds, for the experiment's cells as they stand in the queue:

- a table of the cells (overrides, seed, status, the summary metrics:
  ``final_loss`` and, with an ``evaluation``, ``eval.<metric>``);
- for each grid parameter and each summary metric, the metric per value of
  the parameter over the succeeded cells (all seeds, repeats and other
  parameters pooled): n, mean and a 95% t-interval of the mean
  (``scipy.stats.t``; none for a single cell);
- the quality targets per succeeded cell (met or not);
- the sha256 of each succeeded cell's ``manifest.json``.

The HTML page adds figures drawn by matplotlib (Agg) and embedded as base64
PNGs: the training loss curve of each cell (``train.step`` events of its
telemetry), its evaluation curves during training (``eval.metric`` events:
validation loss and sampled metrics by step), and each metric against each
parameter with its interval as error bars.

Reports are a function of their inputs (the experiment file, the queue's
statuses, the runs' manifests, telemetry and evaluation files): no clock, no
random state, PNGs written without matplotlib's metadata, so the same
inputs give byte-identical files.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crucible_harness.experiment import CellStatus, LoadedExperiment
from crucible_harness.grid import Cell

__all__ = [
    "CellData",
    "ExperimentData",
    "Group",
    "collect",
    "html_report",
    "intro",
    "latex_report",
    "markdown_report",
    "tables",
    "write_reports",
]

Curve = list[tuple[int, float]]


@dataclass(frozen=True)
class CellData:
    """One cell's facts for the reports."""

    cell: Cell
    status: str
    metrics: dict[str, float]
    loss: Curve
    evals: dict[str, Curve]
    manifest_sha256: str | None


@dataclass(frozen=True)
class Group:
    """A metric over the succeeded cells sharing one value of one parameter."""

    parameter: str
    value: str
    metric: str
    n: int
    mean: float
    low: float | None
    high: float | None


@dataclass(frozen=True)
class ExperimentData:
    """Everything a report shows (see the module docstring)."""

    loaded: LoadedExperiment
    cells: list[CellData]
    metrics: list[str]
    groups: list[Group]


def _curves(job_id: str) -> tuple[Curve, dict[str, Curve]]:
    """The loss curve and the evaluation curves (by name) of a run's telemetry.

    A step logged twice (a resumed run) keeps its last value.
    """
    from crucible_core.errors import NotFound
    from crucible_core.records.events import read_telemetry

    loss: dict[int, float] = {}
    evals: dict[str, dict[int, float]] = {}
    try:
        events = list(read_telemetry(job_id))
    except NotFound:
        return [], {}
    for e in events:
        if e.step is None:
            continue
        if e.kind == "train.step" and isinstance(e.data.get("loss"), int | float):
            loss[e.step] = float(e.data["loss"])
        elif e.kind == "eval.metric":
            values: dict[str, Any] = {}
            for key in ("loss", "val_loss"):
                if isinstance(e.data.get(key), int | float):
                    values["val_loss"] = e.data[key]
            nested = e.data.get("metrics")
            if isinstance(nested, dict):
                for k, v in nested.items():  # pyright: ignore[reportUnknownVariableType]
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        values[str(k)] = v  # pyright: ignore[reportUnknownArgumentType]
            for name, v in values.items():
                evals.setdefault(name, {})[e.step] = float(v)
    return sorted(loss.items()), {k: sorted(v.items()) for k, v in sorted(evals.items())}


def _interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    sem = float(stats.sem(x))
    if sem == 0.0:
        return mean, mean, mean
    low, high = stats.t.interval(0.95, len(x) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def _value(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def collect(loaded: LoadedExperiment, statuses: Sequence[CellStatus]) -> ExperimentData:
    """The report's facts from the cells' statuses and their run directories."""
    from crucible_core.records import paths
    from crucible_core.records.artifacts import MANIFEST_FILE
    from crucible_harness.experiment import run_metrics

    cells: list[CellData] = []
    for s in statuses:
        run_dir = paths.run_dir(s.cell.cell_id)
        manifest = run_dir / MANIFEST_FILE
        done = s.status == "succeeded" and manifest.is_file()
        loss, evals = _curves(s.cell.cell_id) if done else ([], {})
        cells.append(
            CellData(
                cell=s.cell,
                status=s.status,
                metrics=run_metrics(run_dir, loaded.evaluation) if done else {},
                loss=loss,
                evals=evals,
                manifest_sha256=hashlib.sha256(manifest.read_bytes()).hexdigest() if done else None,
            )
        )
    names = ["final_loss"]
    if loaded.evaluation is not None:
        names += [f"eval.{m}" for m in loaded.evaluation.metrics]
    names += [t.metric for t in loaded.experiment.quality_targets]
    metrics = [m for m in dict.fromkeys(names) if any(m in c.metrics for c in cells)]
    groups: list[Group] = []
    for parameter in loaded.experiment.parameter_grid:
        for metric in metrics:
            by: dict[str, list[float]] = {}
            for c in cells:
                if parameter in c.cell.overrides and metric in c.metrics:
                    by.setdefault(_value(c.cell.overrides[parameter]), []).append(c.metrics[metric])
            for value in [_value(v) for v in loaded.experiment.parameter_grid[parameter]]:
                if value in by:
                    mean, low, high = _interval(by[value])
                    groups.append(Group(parameter, value, metric, len(by[value]), mean, low, high))
    return ExperimentData(loaded=loaded, cells=cells, metrics=metrics, groups=groups)


def _f(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def _overrides(cell: Cell) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in cell.overrides.items()) or "(base)"


def _tables(data: ExperimentData) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, headers, rows)`` of every table, shared by the three formats."""
    ex = data.loaded.experiment
    out: list[tuple[str, list[str], list[list[str]]]] = [
        (
            "Cells",
            ["cell", "overrides", "seed", "repeat", "status", *data.metrics],
            [
                [c.cell.cell_id, _overrides(c.cell), str(c.cell.seed), str(c.cell.repeat),
                 c.status, *(_f(c.metrics.get(m)) for m in data.metrics)]
                for c in data.cells
            ],
        )
    ]  # fmt: skip
    for parameter in ex.parameter_grid:
        rows = [
            [g.value, g.metric, str(g.n), _f(g.mean),
             "" if g.low is None else f"[{_f(g.low)}, {_f(g.high)}]"]
            for g in data.groups
            if g.parameter == parameter
        ]  # fmt: skip
        if rows:
            out.append((f"By {parameter}", [parameter, "metric", "n", "mean", "95% CI"], rows))
    if ex.quality_targets:
        rows = []
        for c in data.cells:
            if c.status != "succeeded":
                continue
            for t in ex.quality_targets:
                seen = c.metrics.get(t.metric)
                met = seen is not None and t.check(seen)
                rows.append([c.cell.cell_id, f"{t.metric} {t.op} {t.value}",
                             "not recorded" if seen is None else _f(seen),
                             "yes" if met else "no"])  # fmt: skip
        out.append(("Quality targets", ["cell", "target", "observed", "met"], rows))
    return out


def tables(data: ExperimentData) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, headers, rows)`` of every table the reports hold (cells, per parameter,
    quality targets), as text: what the dashboard's experiment page shows."""
    return _tables(data)


def intro(data: ExperimentData) -> list[str]:
    """The report's opening lines (experiment, cell counts, base model, evaluation)."""
    return _intro(data)


def _intro(data: ExperimentData) -> list[str]:
    ex = data.loaded.experiment
    counts: dict[str, int] = {}
    for c in data.cells:
        counts[c.status] = counts.get(c.status, 0) + 1
    lines = [f"Experiment `{ex.id}`" + (f": {ex.name}" if ex.name else "") + "."]
    if ex.description:
        lines.append(ex.description)
    lines.append(
        f"{len(data.cells)} cell(s): "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f"; base model {data.loaded.base.model_spec.name} on "
        f"{data.loaded.base.backend_ref.name}."
    )
    if data.loaded.evaluation is not None:
        e = data.loaded.evaluation
        lines.append(
            f"Each cell is evaluated on {e.dataset} with {', '.join(e.metrics)}"
            + (f" ({e.n} examples)." if e.n else ".")
        )
    lines.append(
        "Intervals are 95% t-intervals of the mean over the cells that share a value "
        "(seeds, repeats and the other parameters pooled)."
    )
    return lines


def _manifests(data: ExperimentData) -> list[tuple[str, str]]:
    return [(c.cell.cell_id, c.manifest_sha256) for c in data.cells if c.manifest_sha256]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_report(data: ExperimentData) -> str:
    """The Markdown report (module docstring)."""
    lines = [f"# Experiment {data.loaded.experiment.id}", "", *_intro(data), ""]
    for title, headers, rows in _tables(data):
        lines += [f"## {title}", "", "| " + " | ".join(headers) + " |",
                  "|" + "---|" * len(headers)]  # fmt: skip
        lines += ["| " + " | ".join(_md_cell(x) for x in row) + " |" for row in rows]
        lines.append("")
    lines += ["## Runs", ""]
    lines += [f"- `{cell}`: manifest sha256 `{sha}`" for cell, sha in _manifests(data)]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def _tex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def latex_report(data: ExperimentData) -> str:
    """Every table as a booktabs ``tabular`` (with a comment naming it), and the manifests."""
    lines = [f"% Experiment {_tex(data.loaded.experiment.id)}"]
    for title, headers, rows in _tables(data):
        lines += [
            f"% {_tex(title)}",
            r"\begin{tabular}{" + "l" * len(headers) + "}",
            r"\toprule",
            " & ".join(_tex(h) for h in headers) + r" \\",
            r"\midrule",
        ]
        lines += [" & ".join(_tex(x) for x in row) + r" \\" for row in rows]
        lines += [r"\bottomrule", r"\end{tabular}", ""]
    lines += [f"% manifest of {_tex(cell)}: sha256 {sha}" for cell, sha in _manifests(data)]
    return "\n".join(lines) + "\n"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(data: ExperimentData) -> list[tuple[str, str]]:
    """``(caption, base64 PNG)`` of each figure (module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    done = [c for c in data.cells if c.loss or c.evals]
    out: list[tuple[str, str]] = []
    if done:
        fig = Figure(figsize=(7, 3.6), dpi=90)
        ax = fig.add_subplot()
        for c in done:
            if c.loss:
                ax.plot([s for s, _ in c.loss], [v for _, v in c.loss], label=c.cell.cell_id)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=6)
        out.append(("Training loss per cell", _png(fig)))
        names = sorted({n for c in done for n in c.evals})
        for name in names:
            fig = Figure(figsize=(7, 3.6), dpi=90)
            ax = fig.add_subplot()
            for c in done:
                curve = c.evals.get(name)
                if curve:
                    ax.plot([s for s, _ in curve], [v for _, v in curve], marker="o",
                            label=c.cell.cell_id)  # fmt: skip
            ax.set_xlabel("step")
            ax.set_ylabel(name)
            ax.legend(fontsize=6)
            out.append((f"Evaluation during training: {name} per cell", _png(fig)))
    for parameter in data.loaded.experiment.parameter_grid:
        for metric in data.metrics:
            gs = [g for g in data.groups if g.parameter == parameter and g.metric == metric]
            if not gs:
                continue
            fig = Figure(figsize=(5, 3.2), dpi=90)
            ax = fig.add_subplot()
            xs = list(range(len(gs)))
            err = [
                [0.0 if g.low is None else g.mean - g.low for g in gs],
                [0.0 if g.high is None else g.high - g.mean for g in gs],
            ]
            ax.errorbar(xs, [g.mean for g in gs], yerr=err, fmt="o", capsize=4)
            ax.set_xticks(xs, [g.value for g in gs])
            ax.set_xlabel(parameter)
            ax.set_ylabel(metric)
            out.append((f"{metric} by {parameter} (mean, 95% CI)", _png(fig)))
    return out


def html_report(data: ExperimentData) -> str:
    """One self-contained HTML page: the tables and the figures (module docstring)."""
    e = html.escape
    body = [f"<h1>Experiment {e(data.loaded.experiment.id)}</h1>"]
    body += [f"<p>{e(line)}</p>" for line in _intro(data)]
    for title, headers, rows in _tables(data):
        body.append(f"<h2>{e(title)}</h2><table>")
        body.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{e(x)}</td>" for x in row) + "</tr>" for row in rows]
        body.append("</table>")
    body.append("<h2>Figures</h2>")
    for caption, png in _figures(data):
        body.append(
            f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )
    body.append("<h2>Runs</h2><ul>")
    body += [
        f"<li><code>{e(cell)}</code>: manifest sha256 <code>{sha}</code></li>"
        for cell, sha in _manifests(data)
    ]
    body.append("</ul>")
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Experiment '
        f"{e(data.loaded.experiment.id)}</title><style>{style}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_reports(loaded: LoadedExperiment, out: Path, scheduler: Any = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``report.tex`` under ``out``: ``{format: path}``."""
    from crucible_core.queue.scheduler import Scheduler
    from crucible_harness.experiment import statuses

    own = scheduler is None
    sched = Scheduler() if own else scheduler
    try:
        data = collect(loaded, statuses(loaded, sched))
    finally:
        if own:
            sched.close()
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for fmt, name, text in (
        ("markdown", "report.md", markdown_report(data)),
        ("html", "report.html", html_report(data)),
        ("latex", "report.tex", latex_report(data)),
    ):
        path = out / name
        path.write_text(text, encoding="utf-8")
        written[fmt] = path
    return written

"""A self-contained HTML report of an evaluation comparison, with its plot embedded.

The page holds the same facts as :func:`crucible_harness.report.markdown_report`
(tables escaped with :func:`html.escape`) and one figure: each metric's score
for A and B with its bootstrap interval, drawn by matplotlib (Agg, no display)
and embedded as a base64 PNG, so the file needs nothing beside it. The PNG is
written without the metadata matplotlib would stamp (software version), so the
same inputs give the same bytes with the same matplotlib.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

from crucible_harness.evaluate import EvalResult

__all__ = ["html_report", "score_plot_png"]


def score_plot_png(a: EvalResult, b: EvalResult, metrics: Sequence[str]) -> bytes:
    """A bar chart of each metric's score for A and B with bootstrap-interval error bars."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    by = [{m.name: m for m in r.metrics} for r in (a, b)]
    fig = Figure(figsize=(1.6 + 1.4 * len(metrics), 3.2), dpi=100)
    ax = fig.add_subplot()
    width = 0.38
    for i, (label, scores) in enumerate(zip(("A", "B"), by, strict=True)):
        xs = [j + (i - 0.5) * width for j in range(len(metrics))]
        means = [scores[m].mean for m in metrics]
        err = [
            [max(0.0, scores[m].mean - scores[m].low) for m in metrics],
            [max(0.0, scores[m].high - scores[m].mean) for m in metrics],
        ]
        ax.bar(xs, means, width, yerr=err, capsize=4, label=label)
    ax.set_xticks(range(len(metrics)), list(metrics))
    ax.set_ylabel("per-example mean")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def html_report(
    a: EvalResult,
    b: EvalResult,
    *,
    files: tuple[Path, Path] | None = None,
    manifests: Sequence[Path] = (),
    metrics: Sequence[str] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> str:
    """The comparison as one HTML page (tables and an embedded PNG figure)."""
    from crucible_harness.report import compare_evals, markdown_report

    _, comps = compare_evals(a, b, metrics=metrics, alpha=alpha, seed=seed)
    md = markdown_report(
        a, b, files=files, manifests=manifests, metrics=metrics, alpha=alpha, seed=seed
    )
    png = score_plot_png(a, b, [c.metric for c in comps])
    body: list[str] = []
    in_table = False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if set(line) <= {"|", "-"}:
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<p>&bull; {html.escape(line[2:])}</p>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    figure = (
        '<h2>Scores with 95% intervals</h2><img alt="scores of A and B" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    )
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td{border:1px solid #ccc;padding:.2em .5em}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Evaluation comparison'
        f"</title><style>{style}</style></head><body>\n"
        + "\n".join(body)
        + "\n"
        + figure
        + "\n</body></html>\n"
    )

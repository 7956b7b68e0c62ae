"""Markdown report comparing two evaluations, with the statistics that decide it.

For each metric both evaluations computed: the two scores with their
bootstrap intervals, the difference A - B with its interval, the test
:func:`crucible_harness.stats.compare` chose (and why), its p-value adjusted
across metrics by Holm's method, and the effect size. The examples are
paired (the same items scored twice: McNemar, paired t, Wilcoxon) when both
evaluations ran on the same dataset content and the same prompts; otherwise
they are compared as independent samples.

The report is a function of its inputs only (no clock, no random state: the
bootstrap is seeded), so the same two files give byte-identical output. It
ends with the sha256 of each evaluation file and of each run's manifest.
:func:`latex_table` gives the scores table as a LaTeX ``tabular`` for a paper.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crucible_core.errors import ConfigError
from crucible_harness.evaluate import EvalResult

if TYPE_CHECKING:
    from crucible_harness.stats import Comparison

__all__ = ["MetricComparison", "compare_evals", "latex_table", "markdown_report"]


@dataclass(frozen=True)
class MetricComparison:
    """One metric of a comparison: the stats result and the Holm-adjusted p-value."""

    metric: str
    score_a: float
    score_b: float
    comparison: Comparison
    p_adjusted: float
    significant: bool


def _paired(a: EvalResult, b: EvalResult) -> bool:
    return a.dataset_hash == b.dataset_hash and [e.input for e in a.examples] == [
        e.input for e in b.examples
    ]


def compare_evals(
    a: EvalResult,
    b: EvalResult,
    *,
    metrics: Sequence[str] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[bool, list[MetricComparison]]:
    """``(paired, per-metric comparisons)`` of ``a`` against ``b``.

    ``metrics`` defaults to every metric both computed; a named metric one of
    them lacks is a ConfigError.
    """
    from crucible_harness.stats import compare, holm

    names_a = [m.name for m in a.metrics]
    names_b = {m.name for m in b.metrics}
    if metrics is None:
        chosen = [m for m in names_a if m in names_b]
        if not chosen:
            raise ConfigError(
                f"{a.eval_id} and {b.eval_id} share no metric",
                hint="evaluate both with the same --metric",
            )
    else:
        chosen = list(metrics)
        for m in chosen:
            if m not in names_a or m not in names_b:
                raise ConfigError(f"--metric: {m!r} was not computed by both evaluations")
    paired = _paired(a, b)
    comps = [
        compare(a.per_example(m), b.per_example(m), paired=paired, alpha=alpha, seed=seed)
        for m in chosen
    ]
    adjusted = holm([c.test.p_value for c in comps], alpha=alpha)
    score = {m.name: m.score for m in a.metrics}, {m.name: m.score for m in b.metrics}
    out = [
        MetricComparison(
            metric=m,
            score_a=score[0][m],
            score_b=score[1][m],
            comparison=c,
            p_adjusted=p,
            significant=r,
        )
        for m, c, p, r in zip(chosen, comps, adjusted.adjusted, adjusted.reject, strict=True)
    ]
    return paired, out


def _f(value: float) -> str:
    return f"{value:.4g}"


def _p(value: float) -> str:
    return "< 0.0001" if value < 1e-4 else f"= {value:.4f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def markdown_report(
    a: EvalResult,
    b: EvalResult,
    *,
    files: tuple[Path, Path] | None = None,
    manifests: Sequence[Path] = (),
    metrics: Sequence[str] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> str:
    """The Markdown report of ``a`` vs ``b`` (see the module docstring).

    ``files`` are the two evaluation files and ``manifests`` the runs'
    ``manifest.json`` files, listed with their sha256 at the end.
    """
    paired, comps = compare_evals(a, b, metrics=metrics, alpha=alpha, seed=seed)
    lines = [
        "# Evaluation comparison",
        "",
        f"A = `{_cell(a.target)}`, B = `{_cell(b.target)}`.",
        "",
        "| | A | B |",
        "|---|---|---|",
        f"| evaluation | `{a.eval_id}` | `{b.eval_id}` |",
        f"| target | {_cell(a.target)} | {_cell(b.target)} |",
        f"| backend / model | {a.backend} / {a.model} | {b.backend} / {b.model} |",
        f"| checkpoint | {_cell(a.checkpoint or '(base weights)')} "
        f"| {_cell(b.checkpoint or '(base weights)')} |",
        f"| dataset | {_cell(a.dataset)} | {_cell(b.dataset)} |",
        f"| dataset hash | `{a.dataset_hash[:23]}` | `{b.dataset_hash[:23]}` |",
        f"| template | {a.template} | {b.template} |",
        f"| answer extraction | {a.extract or 'none'} | {b.extract or 'none'} |",
        f"| examples | {len(a.examples)} | {len(b.examples)} |",
        "",
        "## Scores",
        "",
        f"Intervals are {round(a.metrics[0].confidence * 100)}% bootstrap "
        f"({a.metrics[0].method}) intervals of the per-example mean; "
        "the score is the metric over the whole set. "
        + (
            "The examples are **paired** (same dataset content, same prompts)."
            if paired
            else "The examples are **independent** samples (different data or prompts)."
        )
        + f" p-values are adjusted across metrics by Holm's method; alpha = {alpha}.",
        "",
        "| metric | A | B | A - B (CI) | test | p (Holm) | effect size | significant |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ci = {(m.name, 0): m for m in a.metrics} | {(m.name, 1): m for m in b.metrics}
    for mc in comps:
        c = mc.comparison
        ma, mb = ci[(mc.metric, 0)], ci[(mc.metric, 1)]
        d = c.difference
        lines.append(
            f"| {mc.metric} | {_f(mc.score_a)} [{_f(ma.low)}, {_f(ma.high)}] "
            f"| {_f(mc.score_b)} [{_f(mb.low)}, {_f(mb.high)}] "
            f"| {_f(d.estimate)} [{_f(d.low)}, {_f(d.high)}] "
            f"| {c.test.test} | {_p(mc.p_adjusted).removeprefix('= ')} "
            f"| {c.effect_size.name} = {_f(c.effect_size.value)} "
            f"| {'**yes**' if mc.significant else 'no'} |"
        )
    lines += ["", "## Why these tests", ""]
    for mc in comps:
        c = mc.comparison
        lines.append(
            f"- **{mc.metric}**: {_cell(c.reason)} (raw p {_p(c.test.p_value)}, "
            f"statistic = {_f(c.test.statistic)})."
        )
    lines += ["", "## Inputs", ""]
    if files is not None:
        for label, path in zip(("A", "B"), files, strict=True):
            lines.append(f"- {label}: `{path.name}` sha256 `{_sha256(path)}`")
    for path in manifests:
        lines.append(f"- manifest of run `{path.parent.name}`: sha256 `{_sha256(path)}`")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def latex_table(
    a: EvalResult,
    b: EvalResult,
    *,
    metrics: Sequence[str] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> str:
    """The comparison's scores table as a LaTeX ``tabular`` (booktabs rules), one row per
    metric: A, B, A - B with its interval, the test, the Holm-adjusted p and the effect."""
    paired, comps = compare_evals(a, b, metrics=metrics, alpha=alpha, seed=seed)
    lines = [
        "% A = " + _tex(a.target) + ", B = " + _tex(b.target)
        + (" (paired)" if paired else " (independent samples)"),
        r"\begin{tabular}{lrrrllr}",
        r"\toprule",
        r"metric & A & B & A $-$ B [CI] & test & $p$ (Holm) & effect \\",
        r"\midrule",
    ]  # fmt: skip
    for mc in comps:
        c = mc.comparison
        d = c.difference
        mark = "$^{*}$" if mc.significant else ""
        lines.append(
            f"{_tex(mc.metric)} & {_f(mc.score_a)} & {_f(mc.score_b)} & "
            f"{_f(d.estimate)} [{_f(d.low)}, {_f(d.high)}] & {_tex(c.test.test)} & "
            f"{_tex(_p(mc.p_adjusted).removeprefix('= '))}{mark} & "
            f"{_tex(c.effect_size.name)} {_f(c.effect_size.value)} \\\\"
        )
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"

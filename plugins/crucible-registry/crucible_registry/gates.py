"""Promotion gates: declarative rules a version must pass before an alias moves to it.

One rule is one line of text, in one of three forms::

    eval.gsm8k.exact_match >= 0.4                    # a metric against a number
    loss <= holder.loss                              # against the alias's current holder
    eval.* not worse than holder with p < 0.05       # a paired test on per-sample scores

A metric name may hold ``*`` wildcards (``fnmatch``): the rule then applies
to every matching metric the candidate has (none matching fails). ``OP`` is
one of ``>= <= > < == !=``. A rule comparing with the holder passes when the
alias has no holder yet (nothing to compare with).

``not worse than holder`` is a one-sided paired test on the per-example
scores both versions recorded for the same metric (the examples of a
``crucible eval`` result, in order): it fails when the candidate is worse
with ``p`` below the given level (0.05 when not given). Higher is better,
except for metrics whose last part contains ``loss`` or ``perplexity``.

The test comes from crucible-harness when it is installed:
``crucible_harness.stats.compare(paired=True)`` picks it from the data
(McNemar's exact test for 0/1 scores such as exact_match, a paired t-test
when the differences look normal, else Wilcoxon signed-rank), the same
choice ``crucible eval-compare`` makes. McNemar's test is two-sided there;
its one-sided p is half the two-sided one in the worse direction (exact for
a symmetric binomial), ``1 - p/2`` in the other. Without crucible-harness,
scipy's paired t-test (``ttest_rel``) is the fallback (``pip install
'crucible-registry[stats]'``); with neither, adding or checking the rule is
a ConfigError saying so. Each observation records which test gave its p.

:func:`parse_rule` is the parser (bad text is a ConfigError naming the rule
and the forms); :func:`evaluate` checks rules against two
:class:`MetricView` values and returns one :class:`RuleResult` per rule,
with the values it observed: the evidence stored with the alias move.
"""

from __future__ import annotations

import fnmatch
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

import msgspec

from crucible_core.errors import ConfigError

__all__ = [
    "FORMS",
    "MetricView",
    "Observation",
    "Rule",
    "RuleResult",
    "evaluate",
    "parse_rule",
    "require_stats",
]

Op = Literal[">=", "<=", ">", "<", "==", "!="]
OPS: Final[dict[str, Callable[[float, float], bool]]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
FORMS: Final = (
    "write METRIC OP NUMBER (eval.gsm8k.exact_match >= 0.4), METRIC OP holder.METRIC "
    "(loss <= holder.loss) or METRIC not worse than holder with p < 0.05; "
    "OP is one of >= <= > < == !=, METRIC may hold * wildcards"
)
_METRIC = r"[A-Za-z_*][A-Za-z0-9_.*-]*"
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_COMPARE = re.compile(
    rf"\s*(?P<metric>{_METRIC})\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    rf"(?:(?P<number>{_NUMBER})|holder\.(?P<holder>{_METRIC}))\s*"
)
_NOT_WORSE = re.compile(
    rf"\s*(?P<metric>{_METRIC})\s+not\s+worse\s+than\s+holder"
    rf"(?:\s+with\s+p\s*<\s*(?P<alpha>{_NUMBER}))?\s*"
)


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    """One parsed rule; ``str(rule)`` is its canonical text (parsed back to an equal rule)."""

    metric: str
    op: Op | Literal["not_worse"]
    value: float | None = None  # METRIC OP NUMBER
    holder_metric: str | None = None  # METRIC OP holder.METRIC
    alpha: float | None = None  # not worse than holder with p < alpha

    def __str__(self) -> str:
        if self.op == "not_worse":
            return f"{self.metric} not worse than holder with p < {self.alpha!r}"
        if self.holder_metric is not None:
            return f"{self.metric} {self.op} holder.{self.holder_metric}"
        return f"{self.metric} {self.op} {self.value!r}"


def parse_rule(text: str) -> Rule:
    """Parse one rule; ConfigError naming it and the accepted forms if it is not one."""
    m = _NOT_WORSE.fullmatch(text)
    if m is not None:
        alpha = float(m["alpha"]) if m["alpha"] is not None else 0.05
        if not 0.0 < alpha < 1.0:
            raise ConfigError(f"gate {text[:80]!r}: p must be between 0 and 1", hint=FORMS)
        return Rule(metric=m["metric"], op="not_worse", alpha=alpha)
    m = _COMPARE.fullmatch(text)
    if m is None:
        raise ConfigError(f"{text[:80]!r} is not a gate rule", hint=FORMS)
    metric, op, holder = m["metric"], m["op"], m["holder"]
    if holder is not None:
        if ("*" in metric or "*" in holder) and holder != metric:
            raise ConfigError(
                f"gate {text[:80]!r}: a wildcard compares each metric with the holder's same one",
                hint=f"write {metric} {op} holder.{metric}",
            )
        return Rule(metric=metric, op=op, holder_metric=holder)  # type: ignore[arg-type]
    value = float(m["number"])
    if not math.isfinite(value):
        raise ConfigError(f"gate {text[:80]!r}: the number is not finite", hint=FORMS)
    return Rule(metric=metric, op=op, value=value)  # type: ignore[arg-type]


class MetricView(msgspec.Struct, frozen=True, kw_only=True):
    """What gates see of one version: its metrics, per-sample scores and where they came from."""

    version: int
    metrics: dict[str, float]
    samples: dict[str, list[float]] = {}
    eval_ids: dict[str, str] = {}


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """One metric a rule looked at: the candidate's value, the holder's, the p-value."""

    metric: str
    value: float | None
    holder_value: float | None = None
    p_value: float | None = None
    test: str | None = None  # the test that gave p_value
    eval_id: str | None = None
    holder_eval_id: str | None = None
    passed: bool


class RuleResult(msgspec.Struct, frozen=True, kw_only=True):
    """One rule's verdict with its evidence."""

    rule: str
    passed: bool
    observed: list[Observation] = []
    note: str = ""

    def line(self) -> str:
        """``PASS|FAIL rule: metric=value (holder value) ...`` for a terminal."""
        seen = ", ".join(
            f"{o.metric}={_num(o.value)}"
            + (f" (holder {_num(o.holder_value)})" if o.holder_value is not None else "")
            + (f" p={o.p_value:.4g}" if o.p_value is not None else "")
            + (f" ({o.test})" if o.test else "")
            for o in self.observed
        )
        tail = "; ".join(x for x in (seen, self.note) if x)
        return f"{'PASS' if self.passed else 'FAIL'} {self.rule}" + (f": {tail}" if tail else "")


def _num(value: float | None) -> str:
    return "missing" if value is None else f"{value:.6g}"


def _lower_is_better(metric: str) -> bool:
    last = metric.rsplit(".", 1)[-1].lower()
    return "loss" in last or "perplexity" in last


#: ``(candidate, holder, lower_is_better) -> (p that the candidate is worse, test name)``.
Paired = Callable[[Sequence[float], Sequence[float], bool], tuple[float, str]]


def require_stats() -> Paired:
    """The one-sided paired test of "not worse" (module docstring), or ConfigError."""
    try:
        from crucible_harness.stats import compare
    except ImportError:
        compare = None
    if compare is not None:
        return _harness_test(compare)
    try:
        from scipy import stats  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(
            "the gate rule 'not worse than holder with p < ...' needs a statistics package",
            hint="install crucible-harness (or scipy: pip install 'crucible-registry[stats]')",
        ) from None

    def paired(
        cand: Sequence[float], held: Sequence[float], lower_better: bool
    ) -> tuple[float, str]:
        alternative = "greater" if lower_better else "less"
        result: Any = stats.ttest_rel(list(cand), list(held), alternative=alternative)
        p = float(result.pvalue)
        # identical scores: no evidence of a difference
        return (1.0 if math.isnan(p) else p), "paired t-test (scipy)"

    return paired


def _harness_test(compare: Any) -> Paired:
    def paired(
        cand: Sequence[float], held: Sequence[float], lower_better: bool
    ) -> tuple[float, str]:
        alternative = "greater" if lower_better else "less"
        result: Any = compare(list(cand), list(held), paired=True, alternative=alternative).test
        p = float(result.p_value)
        if result.alternative == "two-sided" and p < 1.0:  # McNemar's exact test: two-sided only
            diff = sum(cand) - sum(held)
            worse = diff > 0 if lower_better else diff < 0
            p = p / 2 if worse else 1.0 - p / 2
        return p, str(result.test)

    return paired


def _matching(pattern: str, metrics: Mapping[str, float]) -> list[str]:
    if "*" not in pattern:
        return [pattern] if pattern in metrics else []
    return sorted(m for m in metrics if fnmatch.fnmatchcase(m, pattern))


def _check(rule: Rule, cand: MetricView, holder: MetricView | None) -> RuleResult:
    names = _matching(rule.metric, cand.metrics)
    if not names:
        return RuleResult(
            rule=str(rule),
            passed=False,
            note=f"version {cand.version} has no metric {rule.metric}",
        )
    if rule.op != "not_worse" and rule.holder_metric is None:
        assert rule.value is not None
        threshold = rule.value
        obs = [
            Observation(
                metric=n,
                value=cand.metrics[n],
                eval_id=cand.eval_ids.get(n),
                passed=OPS[rule.op](cand.metrics[n], threshold),
            )
            for n in names
        ]
        return RuleResult(rule=str(rule), passed=all(o.passed for o in obs), observed=obs)
    if holder is None:
        return RuleResult(rule=str(rule), passed=True, note="the alias has no holder yet")
    if rule.op == "not_worse":
        return _not_worse(rule, names, cand, holder)
    assert rule.holder_metric is not None
    obs: list[Observation] = []
    for n in names:
        other = n if "*" in rule.metric else rule.holder_metric
        held = holder.metrics.get(other)
        ok = held is not None and OPS[rule.op](cand.metrics[n], held)
        obs.append(
            Observation(metric=n, value=cand.metrics[n], holder_value=held,
                        eval_id=cand.eval_ids.get(n), holder_eval_id=holder.eval_ids.get(other),
                        passed=ok)
        )  # fmt: skip
    missing = [o.metric for o in obs if o.holder_value is None]
    note = f"the holder (version {holder.version}) has no {', '.join(missing)}" if missing else ""
    return RuleResult(rule=str(rule), passed=all(o.passed for o in obs), observed=obs, note=note)


def _not_worse(rule: Rule, names: list[str], cand: MetricView, holder: MetricView) -> RuleResult:
    assert rule.alpha is not None
    paired = require_stats()
    obs: list[Observation] = []
    notes: list[str] = []
    for n in names:
        a, b = cand.samples.get(n), holder.samples.get(n)
        if n not in holder.metrics and b is None:
            continue  # the holder was never measured on it: nothing to be worse than
        base = Observation(metric=n, value=cand.metrics[n], holder_value=holder.metrics.get(n),
                           eval_id=cand.eval_ids.get(n), holder_eval_id=holder.eval_ids.get(n),
                           passed=False)  # fmt: skip
        if a is None or b is None:
            notes.append(f"{n}: no per-sample scores for version "
                         f"{cand.version if a is None else holder.version}")  # fmt: skip
            obs.append(base)
            continue
        if len(a) != len(b) or len(a) < 2:
            notes.append(f"{n}: {len(a)} vs {len(b)} samples cannot be paired")
            obs.append(base)
            continue
        p, test = paired(a, b, _lower_is_better(n))
        obs.append(msgspec.structs.replace(base, p_value=p, test=test, passed=p >= rule.alpha))
    if not obs:
        return RuleResult(rule=str(rule), passed=True, note=f"the holder has none of {rule.metric}")
    return RuleResult(
        rule=str(rule), passed=all(o.passed for o in obs), observed=obs, note="; ".join(notes)
    )


def evaluate(
    rules: Sequence[Rule], cand: MetricView, holder: MetricView | None
) -> list[RuleResult]:
    """Check every rule of ``rules`` for ``cand`` against ``holder`` (None: no holder yet)."""
    return [_check(rule, cand, holder) for rule in rules]

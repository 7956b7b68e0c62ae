"""Promotion gates: the rule parser (property-tested), checks on moves, overrides, evidence."""

from __future__ import annotations

import operator
import sys

import pytest
from crucible_registry import GateFailed, Registry
from crucible_registry.gates import FORMS, MetricView, Rule, RuleResult, evaluate, parse_rule
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.errors import ConfigError, NotFound

_metric = st.from_regex(r"[A-Za-z_*][A-Za-z0-9_.*-]{0,20}", fullmatch=True)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_ops = st.sampled_from([">=", "<=", ">", "<", "==", "!="])


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    metric = draw(_metric)
    form = draw(st.sampled_from(["number", "holder", "not_worse"]))
    if form == "number":
        return Rule(metric=metric, op=draw(_ops), value=draw(_finite))
    if form == "holder":
        other = metric if "*" in metric else draw(_metric.filter(lambda m: "*" not in m))
        return Rule(metric=metric, op=draw(_ops), holder_metric=other)
    alpha = draw(st.floats(min_value=1e-9, max_value=0.999, exclude_min=False))
    return Rule(metric=metric, op="not_worse", alpha=alpha)


@given(rules())
def test_a_rule_parses_back_from_its_text(rule: Rule) -> None:
    assert parse_rule(str(rule)) == rule
    assert parse_rule(f"  {rule}  ") == rule


@given(st.text(max_size=60))
def test_any_text_is_a_rule_or_a_config_error(text: str) -> None:
    error: ConfigError | None = None
    try:
        rule = parse_rule(text)
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert error.hint == FORMS or "p must be" in error.message or "wildcard" in error.message
    else:
        assert parse_rule(str(rule)) == rule


@given(_ops, _finite, _finite)
def test_a_threshold_rule_is_the_comparison_it_says(op: str, value: float, bound: float) -> None:
    rule = parse_rule(f"m {op} {bound!r}")
    [result] = evaluate([rule], MetricView(version=1, metrics={"m": value}), None)
    ops = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
           "==": operator.eq, "!=": operator.ne}  # fmt: skip
    assert result.passed == ops[op](value, bound)
    assert result.observed[0].value == value


@pytest.mark.parametrize(
    "bad",
    ["", "loss", "loss >=", ">= 1", "loss => 1", "loss >= inf", "loss >= holder.",
     "eval.* >= holder.loss", "x not worse than holder with p < 1.5", "x not worse than me",
     "loss >= 1 and acc > 2"],
)  # fmt: skip
def test_bad_rules_are_config_errors_naming_the_rule(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rule(bad)
    assert repr(bad[:80]) in info.value.message or "gate" in info.value.message


def test_wildcards_and_holder_comparisons() -> None:
    cand = MetricView(version=2, metrics={"eval.a.acc": 0.5, "eval.b.acc": 0.2, "loss": 1.0})
    holder = MetricView(version=1, metrics={"eval.a.acc": 0.4, "eval.b.acc": 0.3, "loss": 1.5})
    wild, vs_holder, no_match = evaluate(
        [parse_rule("eval.*.acc >= 0.3"), parse_rule("eval.* >= holder.eval.*"),
         parse_rule("eval.gsm8k.exact_match >= 0.4")],
        cand, holder,
    )  # fmt: skip
    assert not wild.passed
    assert [(o.metric, o.passed) for o in wild.observed] == [
        ("eval.a.acc", True),
        ("eval.b.acc", False),
    ]
    assert [(o.metric, o.holder_value) for o in vs_holder.observed] == [
        ("eval.a.acc", 0.4),
        ("eval.b.acc", 0.3),
    ]
    assert not vs_holder.passed
    assert not no_match.passed
    assert "has no metric eval.gsm8k.exact_match" in no_match.note
    [first] = evaluate([parse_rule("loss <= holder.loss")], cand, None)
    assert first.passed
    assert "no holder" in first.note


def test_not_worse_is_a_paired_one_sided_test_on_per_sample_scores() -> None:
    base = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0] * 4
    worse = [0.0 if i % 3 == 0 else x for i, x in enumerate(base)]
    better = [1.0] * len(base)
    rule = parse_rule("eval.* not worse than holder with p < 0.05")
    holder = MetricView(version=1, metrics={"eval.t.em": 0.7}, samples={"eval.t.em": base})

    def check(samples: list[float]) -> tuple[bool, float | None]:
        cand = MetricView(version=2, metrics={"eval.t.em": sum(samples) / len(samples)},
                          samples={"eval.t.em": samples})  # fmt: skip
        [r] = evaluate([rule], cand, holder)
        return r.passed, r.observed[0].p_value

    ok, p = check(worse)
    assert not ok
    assert p is not None
    assert p < 0.05
    assert check(better)[0]
    assert check(base) == (True, 1.0)  # identical scores: no evidence of a difference
    loss_rule = parse_rule("eval.t.loss not worse than holder")  # lower is better for a loss
    hl = MetricView(version=1, metrics={"eval.t.loss": 1.0}, samples={"eval.t.loss": base})
    higher = [x + 1.0 + 0.1 * (i % 2) for i, x in enumerate(base)]
    cl = MetricView(version=2, metrics={"eval.t.loss": 2.0}, samples={"eval.t.loss": higher})
    assert not evaluate([loss_rule], cl, hl)[0].passed
    nosamples = MetricView(version=2, metrics={"eval.t.em": 0.9})
    [r] = evaluate([rule], nosamples, holder)
    assert not r.passed
    assert "no per-sample scores for version 2" in r.note


def test_without_scipy_the_statistical_rule_says_what_it_needs(
    monkeypatch: pytest.MonkeyPatch, three: Registry
) -> None:
    """scipy and crucible-harness are installed in the test environment; their absence is
    simulated (sys.modules)."""
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "crucible_harness.stats", None)
    with pytest.raises(ConfigError, match="needs a statistics package") as info:
        three.add_gate("bigram", "production", "eval.* not worse than holder")
    assert "install crucible-harness" in (info.value.hint or "")
    assert three.gates("bigram") == []


_BASE = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0] * 4


def _not_worse(cand: list[float], held: list[float], metric: str = "eval.t.em") -> RuleResult:
    rule = parse_rule("eval.* not worse than holder with p < 0.05")
    holder = MetricView(version=1, metrics={metric: sum(held) / len(held)}, samples={metric: held})
    c = MetricView(version=2, metrics={metric: sum(cand) / len(cand)}, samples={metric: cand})
    [r] = evaluate([rule], c, holder)
    return r


def test_not_worse_uses_the_harness_test_choice_and_its_p_values() -> None:
    """With crucible-harness installed the p-value is its ``compare``'s, made one-sided."""
    from crucible_harness.stats import compare

    worse = [0.0 if i % 3 == 0 else x for i, x in enumerate(_BASE)]
    r = _not_worse(worse, _BASE)
    [o] = r.observed
    assert not r.passed
    assert o.test == "McNemar's exact test"  # 0/1 scores on the same examples
    two_sided = compare(worse, _BASE, paired=True).test.p_value
    assert o.p_value == pytest.approx(two_sided / 2)
    assert "(McNemar's exact test)" in r.line()
    better = _not_worse(_BASE, worse)  # the same pairs the other way round: far from worse
    assert better.passed
    assert better.observed[0].p_value == pytest.approx(1 - two_sided / 2)
    # Continuous scores: the harness picks a paired t-test or Wilcoxon, one-sided on its own.
    held = [0.5 + 0.01 * (i % 7) for i in range(40)]
    lower = [x - 0.05 - 0.002 * (i % 5) for i, x in enumerate(held)]
    cont = _not_worse(lower, held, "eval.t.f1")
    assert not cont.passed
    assert cont.observed[0].test in ("Paired t-test", "Wilcoxon signed-rank test") or (
        cont.observed[0].test or ""
    ).lower().startswith(("paired", "wilcoxon"))
    expected = compare(lower, held, paired=True, alternative="less").test.p_value
    assert cont.observed[0].p_value == pytest.approx(expected)


def test_without_the_harness_scipy_s_paired_t_test_is_the_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """crucible-harness is installed here; its absence is simulated (sys.modules)."""
    monkeypatch.setitem(sys.modules, "crucible_harness.stats", None)
    from scipy import stats

    worse = [0.0 if i % 3 == 0 else x for i, x in enumerate(_BASE)]
    [o] = _not_worse(worse, _BASE).observed
    assert o.test == "paired t-test (scipy)"
    assert o.p_value == pytest.approx(stats.ttest_rel(worse, _BASE, alternative="less").pvalue)


def test_a_failing_gate_refuses_the_move_and_shows_each_rule_with_its_values(
    three: Registry,
) -> None:
    three.record_eval("bigram", 1, {"exact_match": 0.5}, suite="gsm8k", eval_id="ev-1")
    three.record_eval("bigram", 2, {"exact_match": 0.3}, suite="gsm8k", eval_id="ev-2")
    three.set_alias("bigram", "production", 1)
    three.add_gate("bigram", "production", "eval.gsm8k.exact_match >= 0.4")
    three.add_gate("bigram", "production", "eval.gsm8k.exact_match>=holder.eval.gsm8k.exact_match")
    assert [g.rule for g in three.gates("bigram", "production")] == [
        "eval.gsm8k.exact_match >= 0.4",
        "eval.gsm8k.exact_match >= holder.eval.gsm8k.exact_match",
    ]
    with pytest.raises(GateFailed) as info:
        three.set_alias("bigram", "production", 2, reason="try")
    text = info.value.message
    assert "fails 2 of 2 gate(s)" in text
    assert "FAIL eval.gsm8k.exact_match >= 0.4: eval.gsm8k.exact_match=0.3" in text
    assert "(holder 0.5)" in text
    assert info.value.details["gates"][0]["observed"][0]["eval_id"] == "ev-2"
    assert three.resolve("bigram@production").version == 1
    assert len(three.history("bigram", "production")) == 1  # nothing recorded
    three.record_eval("bigram", 2, {"exact_match": 0.6}, suite="gsm8k", eval_id="ev-2b")
    assert all(r.passed for r in three.check_gates("bigram", "production", 2))
    e = three.set_alias("bigram", "production", 2, reason="better now")
    assert not e.forced
    stored = three.history("bigram", "production")[-1]
    assert [r.passed for r in stored.evidence] == [True, True]
    assert stored.evidence[1].observed[0].holder_eval_id == "ev-1"
    assert stored.evidence[1].observed[0].eval_id == "ev-2b"
    # Rollback is the way back: never gated.
    three.rollback("bigram", "production", reason="undo")
    assert three.resolve("bigram@production").version == 1
    # Gates are per alias: staging has none.
    three.set_alias("bigram", "staging", 3)


def test_force_needs_a_reason_and_is_recorded_with_the_failing_evidence(three: Registry) -> None:
    three.add_gate("bigram", "production", "eval.gsm8k.exact_match >= 0.4")
    with pytest.raises(GateFailed, match=r"has no metric eval\.gsm8k\.exact_match"):
        three.set_alias("bigram", "production", 1)
    with pytest.raises(ConfigError, match="--force needs --reason"):
        three.set_alias("bigram", "production", 1, force=True)
    e = three.set_alias("bigram", "production", 1, force=True, reason="hotfix, eval pending")
    assert e.forced
    [stored] = three.history("bigram", "production")
    assert stored.forced
    assert stored.reason == "hotfix, eval pending"
    assert [r.passed for r in stored.evidence] == [False]


def test_loss_gate_uses_the_registered_loss_and_gates_can_be_removed(three: Registry) -> None:
    losses = {v: three.metric_view("bigram", v).metrics["loss"] for v in (1, 2, 3)}
    assert losses[2] == three.version("bigram", 2).metrics["checkpoint_metric"]
    best, worst = min(losses, key=losses.__getitem__), max(losses, key=losses.__getitem__)
    assert losses[best] < losses[worst]
    three.set_alias("bigram", "champion", best)
    three.add_gate("bigram", "champion", "loss <= holder.loss")
    seen = rf"loss={losses[worst]:.6g} \(holder {losses[best]:.6g}\)"
    with pytest.raises(GateFailed, match=seen):
        three.set_alias("bigram", "champion", worst)
    three.record_eval("bigram", 1, {"loss": 2.0}, suite="heldout")
    three.record_eval("bigram", 3, {"loss": 3.0}, suite="heldout")
    three.set_alias("bigram", "production", 1)
    three.add_gate("bigram", "production", "eval.heldout.loss <= holder.eval.heldout.loss")
    with pytest.raises(GateFailed, match=r"eval.heldout.loss=3 \(holder 2\)"):
        three.set_alias("bigram", "production", 3)
    with pytest.raises(NotFound, match="has no gate"):
        three.remove_gate("bigram", "production", "loss <= 1")
    assert three.remove_gate("bigram", "production", "eval.heldout.loss<=holder.eval.heldout.loss")
    three.set_alias("bigram", "production", 3)
    assert three.remove_gate("bigram", "production") == 0


def test_evaluation_records_are_checked(three: Registry) -> None:
    with pytest.raises(ConfigError, match="samples for b but no such metric"):
        three.record_eval("bigram", 1, {"a": 1.0}, suite="s", samples={"b": [1.0]})
    with pytest.raises(ConfigError, match="not a finite number"):
        three.record_eval("bigram", 1, {"a": float("nan")}, suite="s")
    with pytest.raises(NotFound, match="no version 9"):
        three.record_eval("bigram", 9, {"a": 1.0}, suite="s")
    rec = three.record_eval("bigram", 1, {"a": 1.0}, suite="s", samples={"a": [1.0, 1.0]})
    assert rec.metrics == {"eval.s.a": 1.0}
    assert three.evals("bigram", 1) == [rec]
    assert three.metric_view("bigram", 1).samples == {"eval.s.a": [1.0, 1.0]}

"""cispo, gspo and dro: value and gradient against hand computations from Tinker's formulas.

The losses run on a leaf tensor of "current" log-probabilities, so autograd's
gradient is the gradient with respect to each token's log-probability, which
the formulas give in closed form:

- cispo: ``d loss / d lp_t = -w_t * clip(r_t, lo, hi) * A_t / W``;
- gspo:  ``d loss / d lp_t = -w_t * s * A_t / W`` where the clipped branch is not
  the minimum, 0 where it is (``s`` the datum's sequence ratio, no cross-token terms);
- dro:   ``d loss / d lp_t = -w_t * (A_t - beta * (lp_t - q_t)) / W``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from crucible_local.losses import LossPlan, compute_loss, plan_loss, prepare_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import ConfigError
from crucible_core.ir.backend import Datum, LossFnInputs
from crucible_core.ir.training import Loss, LossName

Row = dict[str, list[float]]


def _batch(plan: LossPlan, rows: Sequence[Row]) -> tuple[torch.Tensor, list[Datum]]:
    """Datums of ``rows`` (their ``logprobs`` are the sampler's) and a padded leaf tensor
    of the rows' current log-probabilities ``lp``."""
    data = [
        Datum(
            model_input=[1] * len(r["lp"]),
            loss_fn_inputs=LossFnInputs(
                target_tokens=[2] * len(r["lp"]),
                weights=r.get("w"),
                logprobs=r["q"],
                advantages=r["A"],
                sequence_ratio_mask=r.get("mask"),
            ),
        )
        for r in rows
    ]
    width = max(len(r["lp"]) for r in rows)
    lp = torch.tensor([[*r["lp"], *([0.0] * (width - len(r["lp"])))] for r in rows])
    return lp.requires_grad_(True), data


def _run(loss: Loss, rows: Sequence[Row]) -> tuple[float, dict[str, float], list[list[float]]]:
    """The loss, its metrics and the gradient per row (padding cut off)."""
    plan = plan_loss(loss)
    lp, data = _batch(plan, rows)
    batch = prepare_batch(data, plan, vocab_rows=4, context_length=64)
    value, metrics = compute_loss(plan, batch, lp, grad=True)
    value.backward()
    assert lp.grad is not None
    grads = [lp.grad[i, : len(r["lp"])].tolist() for i, r in enumerate(rows)]
    return float(value.detach()), metrics, grads


# -- cispo ---------------------------------------------------------------------------


def test_cispo_value_and_gradient_in_each_clipping_branch() -> None:
    # Log-ratios 0.1 (inside [0.8, 1.2]), -0.5 (ratio 0.61: raised to 0.8) and 0.4
    # (ratio 1.49: cut to 1.2), with Tinker's default thresholds.
    row: Row = {"lp": [-1.0, -2.0, -0.5], "q": [-1.1, -1.5, -0.9], "A": [1.0, -2.0, 0.5]}
    value, metrics, (grad,) = _run(Loss(name="cispo"), [row])
    coef = [math.exp(0.1), 0.8, 1.2]
    total = -(coef[0] * -1.0 * 1.0 + coef[1] * -2.0 * -2.0 + coef[2] * -0.5 * 0.5)
    assert metrics["loss:sum"] == pytest.approx(total, rel=1e-5)
    assert value == pytest.approx(total / 3, rel=1e-5)
    assert grad == pytest.approx([-coef[0] * 1.0 / 3, coef[1] * 2.0 / 3, -coef[2] * 0.5 / 3])
    assert metrics["clip_fraction"] == pytest.approx(2 / 3)


def test_cispo_thresholds_and_weights() -> None:
    # Thresholds [0.5, 1.05]: ratio e^0.1 = 1.105 is now cut to 1.05, e^-0.5 = 0.61 kept.
    # Weights scale each token and W = sum |w| = 3 normalises.
    row: Row = {
        "lp": [-1.0, -2.0, -0.5],
        "q": [-1.1, -1.5, -0.9],
        "A": [1.0, -2.0, 0.5],
        "w": [1.0, 0.0, 2.0],
    }
    loss = Loss(name="cispo", params={"clip_low_threshold": 0.5, "clip_high_threshold": 1.05})
    value, metrics, (grad,) = _run(loss, [row])
    total = -(1.05 * -1.0 * 1.0 + 2.0 * 1.05 * -0.5 * 0.5)
    assert metrics["loss:sum"] == pytest.approx(total, rel=1e-5)
    assert value == pytest.approx(total / 3, rel=1e-5)
    assert grad == pytest.approx([-1.05 / 3, 0.0, -2.0 * 1.05 * 0.5 / 3])


log_ratios_inside = st.floats(min_value=-0.22, max_value=0.18)  # ln 0.8 = -0.223, ln 1.2 = 0.182


@st.composite
def policy_rows(draw: st.DrawFn, deltas: st.SearchStrategy[float]) -> list[Row]:
    rows: list[Row] = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 5))
        lp = [draw(st.floats(-6.0, -0.01)) for _ in range(n)]
        q = [v - draw(deltas) for v in lp]
        adv = [draw(st.floats(-3.0, 3.0)) for _ in range(n)]
        w = [draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])) for _ in range(n)]
        if not any(w):
            w[0] = 1.0
        rows.append({"lp": lp, "q": q, "A": adv, "w": w})
    return rows


@settings(max_examples=60, deadline=None)
@given(policy_rows(log_ratios_inside))
def test_cispo_has_the_importance_sampling_gradient_inside_the_clip_range(
    rows: list[Row],
) -> None:
    # Inside [lo, hi] the coefficient is the ratio r itself: d(sg(r) * lp * A) = r * A * dlp,
    # which is d(r * A) -- importance sampling's gradient (the values differ).
    _, _, cispo = _run(Loss(name="cispo"), rows)
    _, _, reinforce = _run(Loss(name="importance_sampling"), rows)
    for a, b in zip(cispo, reinforce, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)


# -- gspo ----------------------------------------------------------------------------


def test_gspo_sequence_ratio_value_and_gradient() -> None:
    # Datum 0: a prompt position (weight 0, outside the mask), then three sampled tokens
    # with log-ratios 0.2, -0.1, 0.1: s = e^(0.2 / 3) = 1.069, inside [0.8, 1.2].
    # Datum 1: log-ratios 0.6, 0.4 (s = e^0.5 = 1.65 > 1.2) with advantages +1 and -1:
    # the +1 token takes the clipped 1.2 (no gradient), the -1 token s * -1.
    rows: list[Row] = [
        {
            "lp": [-3.0, -1.0, -2.0, -0.5],
            "q": [0.0, -1.2, -1.9, -0.6],
            "A": [0.0, 1.0, 1.0, 2.0],
            "w": [0.0, 1.0, 1.0, 1.0],
            "mask": [0.0, 1.0, 1.0, 1.0],
        },
        {"lp": [-1.0, -0.5], "q": [-1.6, -0.9], "A": [1.0, -1.0], "mask": [1.0, 1.0]},
    ]
    loss = Loss(name="gspo", params={"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})
    value, metrics, grads = _run(loss, rows)
    s0, s1 = math.exp(0.2 / 3), math.exp(0.5)
    total = -(s0 * 1.0 + s0 * 1.0 + s0 * 2.0) - (1.2 * 1.0 + s1 * -1.0)
    w_total = 5
    assert metrics["loss:sum"] == pytest.approx(total, rel=1e-5)
    assert value == pytest.approx(total / w_total, rel=1e-5)
    assert grads[0] == pytest.approx([0.0, -s0 / 5, -s0 / 5, -2 * s0 / 5], rel=1e-5)
    assert grads[1] == pytest.approx([0.0, s1 / 5], rel=1e-5)
    assert metrics["sequence_ratio:mean"] == pytest.approx((s0 + s1) / 2, rel=1e-5)
    assert metrics["clip_fraction"] == pytest.approx(1 / 5)


def test_gspo_averages_only_the_masked_tokens() -> None:
    # The mask marks tokens 0 and 1 (log-ratios 0.1, 0.3: s = e^0.2); token 2's own
    # log-ratio (-1.0) does not enter s, yet token 2 carries s's value.
    row: Row = {"lp": [-1.0, -1.0, -1.0], "q": [-1.1, -1.3, 0.0], "A": [1.0, 1.0, 1.0]}
    loss = Loss(name="gspo", params={"clip_low_threshold": 0.5, "clip_high_threshold": 2.0})
    value, metrics, (grad,) = _run(loss, [{**row, "mask": [1.0, 1.0, 0.0]}])
    s = math.exp(0.2)
    assert metrics["sequence_ratio:mean"] == pytest.approx(s, rel=1e-5)
    assert value == pytest.approx(-s, rel=1e-5)
    assert grad == pytest.approx([-s / 3] * 3, rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(policy_rows(st.floats(min_value=-0.6, max_value=0.6)), st.data())
def test_gspo_is_ppo_when_every_token_has_the_sequence_ratio(
    rows: list[Row], data: st.DataObject
) -> None:
    # Give every token of a datum the same log-ratio: then s = r_t for each token and
    # GSPO-token's clipped objective is PPO's, value and gradient (clip range 0.2 each side).
    same: list[Row] = []
    for r in rows:
        delta = data.draw(st.floats(min_value=-0.6, max_value=0.6))
        same.append({**r, "q": [v - delta for v in r["lp"]], "mask": [1.0] * len(r["lp"])})
    thresholds = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    g_value, g_metrics, g_grads = _run(Loss(name="gspo", params=thresholds), same)
    p_value, p_metrics, p_grads = _run(Loss(name="ppo", params={"clip_range": 0.2}), same)
    assert g_value == pytest.approx(p_value, rel=1e-4, abs=1e-6)
    assert g_metrics["loss:sum"] == pytest.approx(p_metrics["loss:sum"], rel=1e-4, abs=1e-6)
    for a, b in zip(g_grads, p_grads, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)


def test_gspo_needs_a_mask_that_marks_a_token() -> None:
    loss = Loss(name="gspo", params={"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})
    row: Row = {"lp": [-1.0, -2.0], "q": [-1.0, -2.0], "A": [1.0, 1.0]}
    with pytest.raises(ConfigError, match=r"batch\[0\]\.loss_fn_inputs\.sequence_ratio_mask"):
        _run(loss, [row])
    with pytest.raises(ConfigError, match=r"batch\[1\].*marks no token"):
        _run(loss, [{**row, "mask": [0.0, 1.0]}, {**row, "mask": [0.0, 0.0]}])


# -- dro -----------------------------------------------------------------------------


def test_dro_value_and_gradient() -> None:
    row: Row = {"lp": [-1.0, -2.0], "q": [-1.5, -2.0], "A": [1.0, -0.5]}
    value, metrics, (grad,) = _run(Loss(name="dro", params={"beta": 0.1}), [row])
    # objective_t = lp * A - beta / 2 * (lp - q)^2
    objective = (-1.0 * 1.0 - 0.05 * 0.5**2) + (-2.0 * -0.5 - 0.0)
    assert metrics["loss:sum"] == pytest.approx(-objective, rel=1e-5)
    assert value == pytest.approx(-objective / 2, rel=1e-5)
    assert grad == pytest.approx([-(1.0 - 0.1 * 0.5) / 2, -(-0.5 - 0.0) / 2], rel=1e-5)


# -- params --------------------------------------------------------------------------


def test_defaults_and_required_params() -> None:
    assert plan_loss(Loss(name="cispo")).params == {"low": 0.8, "high": 1.2}
    zero = plan_loss(Loss(name="cispo", params={"clip_low_threshold": 0}))
    assert zero.params == {"low": 0.0, "high": 1.2}
    assert plan_loss(Loss(name="dro", params={"beta": 0.05})).params == {"beta": 0.05}
    with pytest.raises(ConfigError, match=r"learning_config\.loss\.params\.beta") as dro:
        plan_loss(Loss(name="dro"))
    assert "no default" in (dro.value.hint or "")
    with pytest.raises(ConfigError, match=r"params\.clip_low_threshold: the gspo loss") as gspo:
        plan_loss(Loss(name="gspo", params={"clip_high_threshold": 1.2}))
    assert "clip_high_threshold" in (gspo.value.hint or "")
    with pytest.raises(ConfigError, match=r"params\.clip_high_threshold: the gspo loss"):
        plan_loss(Loss(name="gspo", params={"clip_low_threshold": 0.8}))


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        (
            "cispo",
            {"clip_low_threshold": -0.1},
            r"params\.clip_low_threshold: expected a "
            r"number >= 0, got -0\.1",
        ),
        (
            "cispo",
            {"clip_high_threshold": 0},
            r"params\.clip_high_threshold: expected a "
            r"number > 0",
        ),
        ("cispo", {"clip_high_threshold": "big"}, r"params\.clip_high_threshold: expected"),
        (
            "cispo",
            {"clip_low_threshold": 1.3},
            r"clip_low_threshold: 1\.3 is above "
            r"clip_high_threshold 1\.2",
        ),
        ("cispo", {"clip": 0.2}, r"'clip' not understood by the cispo loss"),
        ("dro", {"beta": -1}, r"params\.beta: expected a number >= 0"),
        ("dro", {"beta": True}, r"params\.beta: expected a number"),
    ],
)
def test_bad_params_name_the_field(name: LossName, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        plan_loss(Loss(name=name, params=params))

"""Every loss: its value against a hand computation, and the direction it trains in."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crucible_local.backend import LocalBackend
from crucible_local.session import LocalTrainingSession

from crucible_core.ir.backend import AdamParams, Datum, LossFnInputs
from crucible_core.ir.training import SGD, Loss

TEXTS = ["the cat sat", "a dog ran off"]


def _with(datum: Datum, **inputs: Any) -> Datum:
    base = datum.loss_fn_inputs
    return Datum(
        model_input=datum.model_input,
        loss_fn_inputs=LossFnInputs(
            target_tokens=base.target_tokens,
            weights=inputs.get("weights", base.weights),
            advantages=inputs.get("advantages"),
            logprobs=inputs.get("logprobs"),
            ref_logprobs=inputs.get("ref_logprobs"),
        ),
    )


def _setup(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> tuple[LocalTrainingSession, list[Datum], list[list[float]]]:
    session = backend.create_session(make_job(optimizer=SGD(lr=0.5)))
    batch = datums(session.tokenizer, TEXTS)
    current = session.forward(batch, Loss()).result().logprobs
    return session, batch, current


def _step(session: LocalTrainingSession, batch: list[Datum], loss: Loss) -> Any:
    result = session.forward_backward(batch, loss).result()
    step = session.optim_step(AdamParams(learning_rate=0.5, beta1=0.0)).result()
    return result, step


def test_cross_entropy_is_the_weighted_mean(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    session, batch, lp = _setup(backend, make_job, datums)
    weights = [[0.5 * (t % 3) for t in range(len(row))] for row in lp]
    data = [_with(d, weights=w) for d, w in zip(batch, weights, strict=True)]
    result = session.forward(data, Loss()).result()
    total = -sum(
        w * v for ws, vs in zip(weights, lp, strict=True) for w, v in zip(ws, vs, strict=True)
    )
    assert result.metrics["loss:sum"] == pytest.approx(total, rel=1e-5)
    assert result.loss == pytest.approx(total / sum(map(sum, weights)), rel=1e-5)
    first, _ = _step(session, data, Loss())
    second = session.forward(data, Loss()).result()
    assert second.loss < first.loss


def test_importance_sampling_value_and_direction(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    session, batch, lp = _setup(backend, make_job, datums)
    # The sampler's logprobs are 0.1 below the current ones: every ratio is e^0.1.
    advantages = [[1.0 if t % 2 else -0.5 for t in range(len(row))] for row in lp]
    data = [
        _with(d, logprobs=[v - 0.1 for v in row], advantages=a)
        for d, row, a in zip(batch, lp, advantages, strict=True)
    ]
    loss = Loss(name="importance_sampling")
    result = session.forward(data, loss).result()
    n = sum(len(a) for a in advantages)
    expected = -math.exp(0.1) * sum(map(sum, advantages)) / n
    assert result.loss == pytest.approx(expected, rel=1e-4)
    assert result.metrics["ratio:mean"] == pytest.approx(math.exp(0.1), rel=1e-4)
    # One step raises the logprob of positive-advantage tokens, lowers the others.
    _step(session, data, loss)
    after = session.forward(data, Loss()).result().logprobs
    up = [after[b][t] - lp[b][t] for b in range(2) for t in range(len(lp[b])) if t % 2]
    down = [after[b][t] - lp[b][t] for b in range(2) for t in range(len(lp[b])) if not t % 2]
    assert sum(up) / len(up) > 0
    assert sum(down) / len(down) < 0


def test_ppo_clips_the_ratio(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    session, batch, lp = _setup(backend, make_job, datums)
    # Ratio e^0.5 = 1.65 is beyond 1 + 0.2: with positive advantages the clipped
    # objective 1.2 * A is the minimum, and it has no gradient.
    ones = [[1.0] * len(row) for row in lp]
    clipped = [
        _with(d, logprobs=[v - 0.5 for v in row], advantages=a)
        for d, row, a in zip(batch, lp, ones, strict=True)
    ]
    loss = Loss(name="ppo", params={"clip_range": 0.2})
    result, step = _step(session, clipped, loss)
    assert result.loss == pytest.approx(-1.2, rel=1e-5)
    assert result.metrics["clip_fraction"] == pytest.approx(1.0)
    assert step.grad_norm == 0.0
    # With negative advantages the unclipped term r * A is the minimum: -(e^0.5 * -1).
    minus = [
        _with(d, logprobs=[v - 0.5 for v in row], advantages=[-1.0] * len(row))
        for d, row in zip(batch, lp, strict=True)
    ]
    result, step = _step(session, minus, loss)
    assert result.loss == pytest.approx(math.exp(0.5), rel=1e-4)
    assert result.metrics["clip_fraction"] == 0.0
    assert step.grad_norm > 0
    # Asymmetric ranges: ratio e^-0.5 = 0.61 < 1 - 0.3, advantage +1 -> unclipped 0.61.
    low = [
        _with(d, logprobs=[v + 0.5 for v in row], advantages=[1.0] * len(row))
        for d, row in zip(batch, session.forward(batch, Loss()).result().logprobs, strict=True)
    ]
    value = session.forward(low, Loss(name="ppo", params={"clip_range_low": 0.3})).result()
    assert value.loss == pytest.approx(-math.exp(-0.5), rel=1e-4)


def test_dpo_starts_at_log2_and_learns_the_preference(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    session = backend.create_session(make_job(optimizer=SGD(lr=0.5)))
    prompt = "Q: pick one. A:"
    tok = session.tokenizer
    pairs = datums(tok, [prompt + " yes", prompt + " nope"])
    ref = session.forward(pairs, Loss()).result().logprobs
    n_prompt = len(tok.encode(prompt)) - 1
    data = [
        _with(d, ref_logprobs=r, weights=[0.0] * n_prompt + [1.0] * (len(r) - n_prompt))
        for d, r in zip(pairs, ref, strict=True)
    ]
    loss = Loss(name="dpo", params={"beta": 0.5})
    first, _ = _step(session, data, loss)
    # Policy == reference: margin 0, loss log 2.
    assert first.loss == pytest.approx(math.log(2), rel=1e-5)
    assert first.metrics["accuracy"] == 0.0
    for _ in range(5):
        last, _ = _step(session, data, loss)
    assert last.loss < first.loss
    assert last.metrics["accuracy"] == 1.0
    assert last.metrics["reward:chosen"] > last.metrics["reward:rejected"]
    lp = session.forward(data, Loss()).result().logprobs
    chosen = sum(lp[0][n_prompt:]) - sum(ref[0][n_prompt:])
    rejected = sum(lp[1][n_prompt:]) - sum(ref[1][n_prompt:])
    after = session.forward(data, loss).result()
    assert after.loss == pytest.approx(math.log1p(math.exp(-0.5 * (chosen - rejected))), rel=1e-4)


CUSTOM = """
import torch

def neg_mean(data, logprobs, scale=1.0):
    flat = torch.cat(logprobs)
    loss = -flat.mean() * scale
    return loss, {"tokens_seen": float(flat.numel()), "datums": len(data)}

def no_grad_loss(data, logprobs):
    return torch.tensor(1.0), {}

def broken(data, logprobs):
    raise ValueError("boom")
"""


def test_custom_loss_trains_like_the_loss_it_computes(
    backend: LocalBackend,
    make_job: Callable[..., Any],
    datums: Callable[..., list[Datum]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "my_losses.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    custom = Loss(name="custom", fn="my_losses:neg_mean", params={"scale": 1.0})
    a = backend.create_session(make_job(optimizer=SGD(lr=0.5)))
    b = backend.create_session(make_job(optimizer=SGD(lr=0.5)))
    batch = datums(a.tokenizer, TEXTS)
    losses_a, losses_b = [], []
    for _ in range(3):
        ra, _ = _step(a, batch, custom)
        rb, _ = _step(b, batch, Loss())
        losses_a.append(ra.loss)
        losses_b.append(rb.loss)
        assert ra.metrics == {"tokens_seen": float(rb.num_tokens), "datums": 2.0}
    # Unweighted mean of -logprobs is cross_entropy with unit weights: same training.
    assert losses_a == pytest.approx(losses_b, rel=1e-5)
    assert losses_a[-1] < losses_a[0]


def test_custom_loss_errors_are_clear(
    backend: LocalBackend,
    make_job: Callable[..., Any],
    datums: Callable[..., list[Datum]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crucible_core.errors import BackendError, ConfigError

    (tmp_path / "my_losses.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    session = backend.create_session(make_job())
    batch = datums(session.tokenizer, TEXTS)
    with pytest.raises(ConfigError, match=r"learning_config\.loss\.fn: cannot import module"):
        session.forward_backward(batch, Loss(name="custom", fn="no_such_module:f"))
    with pytest.raises(ConfigError, match="has no attribute 'missing'"):
        session.forward_backward(batch, Loss(name="custom", fn="my_losses:missing"))
    fut = session.forward_backward(batch, Loss(name="custom", fn="my_losses:no_grad_loss"))
    with pytest.raises(ConfigError, match="returned a loss with no gradient"):
        fut.result()
    fut = session.forward_backward(batch, Loss(name="custom", fn="my_losses:broken"))
    with pytest.raises(BackendError, match="ValueError: boom"):
        fut.result()
    # forward (no gradient) accepts the constant loss.
    assert (
        session.forward(batch, Loss(name="custom", fn="my_losses:no_grad_loss")).result().loss == 1
    )

"""crucible IR -> tinker types (crucible_tinker.conversion): the loss scaling that makes
Tinker's summed losses crucible's weighted means, and completion text cut at stops."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from crucible_tinker.conversion import (
    check_loss,
    completion_text,
    lora_groups,
    loss_config,
    loss_scale,
    tinker_datums,
)
from crucible_tinker.losses import LOSS_CONFIG_KEYS, NamedLoss, crucible_params, tinker_config
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import ConfigError, UnsupportedError
from crucible_core.ir.backend import Datum, LossFnInputs, Message
from crucible_core.ir.training import LoRA, Loss

weights = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, width=32)


@st.composite
def batches(draw: st.DrawFn) -> list[Datum]:
    out: list[Datum] = []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(1, 8))
        tokens = draw(st.lists(st.integers(0, 255), min_size=n, max_size=n))
        w = draw(st.none() | st.lists(weights, min_size=n, max_size=n))
        adv = draw(st.lists(st.floats(-5, 5, width=32), min_size=n, max_size=n))
        lp = draw(st.lists(st.floats(-20, 0, width=32), min_size=n, max_size=n))
        inputs = LossFnInputs(target_tokens=tokens, weights=w, advantages=adv, logprobs=lp)
        out.append(Datum(model_input=tokens, loss_fn_inputs=inputs))
    return out


def _weights(d: Datum) -> np.ndarray:
    w = d.loss_fn_inputs.weights
    return np.asarray(w if w is not None else [1.0] * len(d.model_input), np.float64)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_cross_entropy_weights_sent_sum_to_one(batch: list[Datum]) -> None:
    """Tinker sums the weighted token losses; the weights sent are divided by their total,
    so the sum is crucible's weighted mean (when anything is weighted at all)."""
    loss = Loss(name="cross_entropy")
    scale = loss_scale(batch, loss)
    total = float(sum(_weights(d).sum() for d in batch))
    assert scale == pytest.approx(total if total > 0 else 1.0, rel=1e-5)
    data = tinker_datums(batch, loss, scale)
    sent = sum(float(d.loss_fn_inputs["weights"].to_numpy().sum()) for d in data)
    assert sent == pytest.approx(total / scale, rel=1e-4, abs=1e-6)
    for ours, theirs in zip(batch, data, strict=True):
        assert theirs.model_input.to_ints() == list(ours.model_input)
        targets = theirs.loss_fn_inputs["target_tokens"].to_numpy().tolist()
        assert targets == list(ours.loss_fn_inputs.target_tokens)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_policy_losses_fold_weights_into_advantages(batch: list[Datum]) -> None:
    loss = Loss(name="importance_sampling")
    scale = loss_scale(batch, loss)
    for ours, theirs in zip(batch, tinker_datums(batch, loss, scale), strict=True):
        adv = np.asarray(ours.loss_fn_inputs.advantages, np.float32) * _weights(ours) / scale
        got = theirs.loss_fn_inputs["advantages"].to_numpy()
        assert np.allclose(got, adv, rtol=1e-4, atol=1e-6)
        assert "weights" not in theirs.loss_fn_inputs


def test_policy_loss_without_logprobs_names_the_fields() -> None:
    datum = Datum(model_input=[1, 2], loss_fn_inputs=LossFnInputs(target_tokens=[2, 3]))
    with pytest.raises(ConfigError, match=r"logprobs and \.advantages"):
        tinker_datums([datum], Loss(name="ppo"), 1.0)


def test_lora_target_modules_become_layer_groups() -> None:
    assert lora_groups(LoRA(target_modules=["q_proj", "v_proj"], train_unembed=False)) == (
        True,
        False,
        False,
    )
    assert lora_groups(LoRA(target_modules=["all-linear"], train_unembed=False)) == (
        True,
        True,
        False,
    )
    with pytest.raises(UnsupportedError, match="conv1"):
        lora_groups(LoRA(target_modules=["conv1"]))


class _Chars:
    """A real (tiny) tokenizer: one token per character, 0 is end-of-sequence."""

    name = "chars"
    vocab_size = 256
    eos_token_id = 0
    chat_template = None

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids if i)

    def render_chat(self, messages: Sequence[Message]) -> list[int]:
        return self.encode("".join(m.content for m in messages))


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet="abc.", max_size=20),
    st.lists(st.text(alphabet="abc.", min_size=1, max_size=3), max_size=3),
    st.booleans(),
)
def test_completion_text_never_holds_a_stop_string(
    text: str, stops: list[str], ended: bool
) -> None:
    tok = _Chars()
    tokens = tok.encode(text) + ([0] if ended else [])
    out, stopped = completion_text(tok, tokens, stops)
    assert text.startswith(out)
    assert not any(s in out for s in stops)
    assert stopped == any(s in text for s in stops)
    if not stopped:
        assert out == text


# -- crucible Loss.params <-> Tinker loss_fn_config (crucible_tinker.losses) ----------------

POLICY_LOSSES: tuple[NamedLoss, ...] = ("ppo", "cispo", "gspo", "dro")
distance_low = st.floats(1e-4, 0.99)
distance_high = st.floats(1e-4, 10.0)


@st.composite
def crucible_losses(draw: st.DrawFn) -> tuple[NamedLoss, dict[str, float]]:
    """A policy loss and params crucible-local accepts, in every form each loss takes them."""
    name = draw(st.sampled_from(POLICY_LOSSES))
    params: dict[str, float] = {}
    if name == "ppo":  # any of clip_range, clip_range_low, clip_range_high, or none
        for key, values in (
            ("clip_range", distance_low),
            ("clip_range_low", distance_low),
            ("clip_range_high", distance_high),
        ):
            value = draw(st.none() | values)
            if value is not None:
                params[key] = value
    elif name == "dro":
        params["beta"] = draw(st.floats(0.0, 10.0))
    else:  # gspo needs both thresholds; cispo has defaults for either
        low = draw((st.none() if name == "cispo" else st.nothing()) | st.floats(0.0, 1.0))
        high = draw((st.none() if name == "cispo" else st.nothing()) | st.floats(1.0, 10.0))
        if low is not None:
            params["clip_low_threshold"] = low
        if high is not None:
            params["clip_high_threshold"] = high
    return name, params


def _ppo_bounds(params: dict[str, float]) -> dict[str, float]:
    """ppo params with clip_range written out as the distances it stands for."""
    symmetric = params.get("clip_range")
    out = {
        "clip_range_low": params.get("clip_range_low", symmetric),
        "clip_range_high": params.get("clip_range_high", symmetric),
    }
    return {k: v for k, v in out.items() if v is not None}


@settings(max_examples=200, deadline=None)
@given(crucible_losses())
def test_loss_params_survive_the_round_trip_through_tinker(
    loss: tuple[NamedLoss, dict[str, float]],
) -> None:
    """crucible params -> Tinker config (what the tinker backend sends) -> crucible params
    (what serve-tinker trains with) is the identity, ppo's clip_range written out as its
    two distances; and the other way round, Tinker config -> crucible -> Tinker."""
    from crucible_local.losses import plan_loss

    name, params = loss
    config = tinker_config(name, params)
    assert set(config) <= set(LOSS_CONFIG_KEYS[name])  # only keys Tinker documents
    back = crucible_params(name, config)
    expected = _ppo_bounds(params) if name == "ppo" else params
    assert back == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # The loss crucible-local would run is the same (its own reading of the params)...
    ours = plan_loss(Loss(name=name, params=params)).params
    theirs = plan_loss(Loss(name=name, params=back)).params
    assert theirs == pytest.approx(ours, rel=1e-9, abs=1e-12)
    # ... and a Tinker config comes back as itself.
    assert tinker_config(name, back) == pytest.approx(config, rel=1e-9, abs=1e-12)
    if name == "ppo":  # what Tinker's ppo reads: bounds on the ratio, default 0.8 and 1.2
        assert config.get("clip_low_threshold", 0.8) == pytest.approx(1 - ours["low"])
        assert config.get("clip_high_threshold", 1.2) == pytest.approx(1 + ours["high"])


def test_loss_params_tinker_cannot_take_are_refused_before_sending() -> None:
    with pytest.raises(ConfigError, match=r"'clip_low_threshold' not understood by the ppo"):
        check_loss(Loss(name="ppo", params={"clip_low_threshold": 0.8}))
    with pytest.raises(ConfigError, match=r"params\.beta: the dro loss needs it"):
        check_loss(Loss(name="dro"))
    with pytest.raises(ConfigError, match="clip range below 1 must be < 1"):
        check_loss(Loss(name="ppo", params={"clip_range": 1.5}))
    with pytest.raises(ConfigError, match="is above clip_high_threshold"):
        check_loss(Loss(name="cispo", params={"clip_low_threshold": 1.3}))
    with pytest.raises(UnsupportedError, match="dpo"):
        check_loss(Loss(name="dpo"))
    assert tinker_config("ppo", {}) == {}  # Tinker's defaults are crucible's (0.8/1.2)
    assert tinker_config("cispo", {}) == {}


def test_gspo_datums_carry_the_sequence_ratio_mask_and_dro_beta_is_scaled() -> None:
    def datum(weights: list[float] | None, mask: list[float] | None) -> Datum:
        return Datum(
            model_input=[1, 2, 3],
            loss_fn_inputs=LossFnInputs(
                target_tokens=[2, 3, 4],
                weights=weights,
                logprobs=[-1.0, -2.0, -3.0],
                advantages=[0.0, 1.0, 1.0],
                sequence_ratio_mask=mask,
            ),
        )

    gspo = Loss(name="gspo", params={"clip_low_threshold": 0.9, "clip_high_threshold": 1.1})
    batch = [datum([0.0, 1.0, 1.0], [0.0, 1.0, 1.0])]
    (sent,) = tinker_datums(batch, gspo, loss_scale(batch, gspo))
    assert sent.loss_fn_inputs["sequence_ratio_mask"].to_numpy().tolist() == [0.0, 1.0, 1.0]
    assert (
        "sequence_ratio_mask" not in tinker_datums(batch, Loss(name="ppo"), 2.0)[0].loss_fn_inputs
    )
    with pytest.raises(ConfigError, match=r"\.sequence_ratio_mask for every datum"):
        tinker_datums([datum(None, None)], gspo, 1.0)
    # dro: the advantages are divided by W (6 tokens of weight 1 here), and so is beta.
    dro = Loss(name="dro", params={"beta": 0.3})
    batch = [datum(None, None), datum([1.0, 1.0, 1.0], None)]
    scale = loss_scale(batch, dro)
    assert scale == 6.0
    assert loss_config(batch, dro, scale) == pytest.approx({"beta": 0.05})
    with pytest.raises(ConfigError, match="one weight on every token"):
        loss_config([datum([0.0, 1.0, 1.0], None)], dro, 2.0)

"""crucible IR -> tinker types (crucible_tinker.conversion): the loss scaling that makes
Tinker's summed losses crucible's weighted means, and completion text cut at stops."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from crucible_tinker.conversion import (
    completion_text,
    lora_groups,
    loss_scale,
    tinker_datums,
)
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

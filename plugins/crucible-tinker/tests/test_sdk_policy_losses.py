"""Tinker's cispo, gspo and dro losses through the unmodified SDK against the server.

Each test builds RL datums the way tinker-cookbook does (sampler logprobs,
advantages, for gspo a ``sequence_ratio_mask``), checks the documented outputs
(a ``logprobs`` tensor per datum, ``loss:sum`` equal to the documented formula
on those logprobs) and that a few steps lower the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tinker
from crucible_tinker.server import TinkerServer
from tinker import types

from .conftest import BASE_MODEL, WAIT, ServiceFactory

pytestmark = pytest.mark.timeout(240)

TEXTS = ["The quick brown fox.", "Tiny models learn fast."]
#: Advantage of every sampled token: positive, so each loss trains the tokens up.
ADVANTAGE = 1.0
#: Sampler logprobs are the current ones minus this: every token's ratio is e^0.05.
OFFSET = 0.05


def _datums(
    tokenizer: Any, current: list[np.ndarray] | None, *, mask: bool, offset: float = OFFSET
) -> list[types.Datum]:
    """One RL datum per text: the first target is the prompt's (advantage 0, outside the
    ratio mask), the others are "sampled" with logprob ``current - offset`` (0 without
    ``current``)."""
    out: list[types.Datum] = []
    for i, text in enumerate(TEXTS):
        ids = tokenizer.encode(text)
        n = len(ids) - 1
        sampled = [0.0] * n if current is None else [0.0, *(current[i][1:] - offset)]
        inputs: dict[str, Any] = {
            "target_tokens": ids[1:],
            "logprobs": np.asarray(sampled, dtype=np.float32),
            "advantages": [0.0] + [ADVANTAGE] * (n - 1),
        }
        if mask:
            inputs["sequence_ratio_mask"] = [0.0] + [1.0] * (n - 1)
        out.append(
            types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]), loss_fn_inputs=inputs)
        )
    return out


def _current(training: tinker.TrainingClient, tokenizer: Any) -> list[np.ndarray]:
    """The model's logprobs of each text's targets now (a cross_entropy forward)."""
    probe = []
    for text in TEXTS:
        ids = tokenizer.encode(text)
        probe.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(ids[:-1]),
                loss_fn_inputs={"target_tokens": ids[1:]},
            )
        )
    out = training.forward(probe, "cross_entropy").result(timeout=WAIT)
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs]


def _cispo(lp: np.ndarray, q: np.ndarray, adv: np.ndarray) -> float:
    coef = np.clip(np.exp(lp - q), 0.8, 1.2)  # Tinker's default thresholds
    return float(-(coef * lp * adv).sum())


def _gspo(lp: np.ndarray, q: np.ndarray, adv: np.ndarray) -> float:
    s = math.exp(float((lp[1:] - q[1:]).mean()))  # the masked tokens: all but the first
    return float(-np.minimum(s * adv, min(max(s, 0.8), 1.2) * adv).sum())


def _dro(lp: np.ndarray, q: np.ndarray, adv: np.ndarray) -> float:
    return float(-(lp * adv - 0.5 * 0.05 * (lp - q) ** 2).sum())


CASES: list[tuple[str, dict[str, float], Callable[..., float]]] = [
    ("cispo", {}, _cispo),
    ("gspo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}, _gspo),
    ("dro", {"beta": 0.05}, _dro),
]


@pytest.mark.parametrize(("loss_fn", "config", "formula"), CASES, ids=[c[0] for c in CASES])
def test_policy_loss_outputs_and_training(
    server: TinkerServer,
    service_factory: ServiceFactory,
    tokenizer: Any,
    loss_fn: str,
    config: dict[str, float],
    formula: Callable[..., float],
) -> None:
    service = service_factory(server)
    training = service.create_lora_training_client(
        base_model=BASE_MODEL, rank=4, seed=3, train_unembed=False
    ).result(timeout=WAIT)
    current = _current(training, tokenizer)
    data = _datums(tokenizer, current, mask=loss_fn == "gspo")

    sums: list[float] = []
    for step in range(4):
        fb = training.forward_backward(data, loss_fn, config or None)
        training.optim_step(types.AdamParams(learning_rate=2e-2)).result(timeout=WAIT)
        out = fb.result(timeout=WAIT)
        assert len(out.loss_fn_outputs) == len(data)
        expected = 0.0
        for i, (d, o) in enumerate(zip(data, out.loss_fn_outputs, strict=True)):
            lp = o["logprobs"].to_numpy()
            assert lp.shape == (d.model_input.length,)
            if step == 0:  # the weights the probe saw: the same logprobs
                assert lp == pytest.approx(current[i], abs=1e-5)
            q = d.loss_fn_inputs["logprobs"].to_numpy()
            adv = d.loss_fn_inputs["advantages"].to_numpy()
            expected += formula(lp, q, adv)
        assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
        sums.append(out.metrics["loss:sum"])
    assert sums[-1] < sums[0], sums


def test_refusals_name_what_is_missing(
    server: TinkerServer, service_factory: ServiceFactory, tokenizer: Any
) -> None:
    service = service_factory(server)
    training = service.create_lora_training_client(
        base_model=BASE_MODEL, rank=4, seed=4, train_unembed=False
    ).result(timeout=WAIT)
    plain = _datums(tokenizer, None, mask=False)
    masked = _datums(tokenizer, None, mask=True)
    refusals: list[tuple[list[types.Datum], str, dict[str, float] | None, str]] = [
        (masked, "gspo", None, "params.clip_low_threshold: the gspo loss needs it"),
        (
            plain,
            "gspo",
            {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
            "sequence_ratio_mask is missing",
        ),
        (plain, "dro", None, "params.beta: the dro loss needs it"),
        (plain, "ppo", {"clip_low_threshold": 1.1}, "clip_low_threshold = 1.1"),
        (plain, "stable_reinforce", None, "do not define its objective"),
    ]
    for data, loss_fn, config, message in refusals:
        with pytest.raises(tinker.TinkerError, match=message):
            training.forward(data, loss_fn, config).result(timeout=WAIT)
    # Tinker's ppo thresholds are bounds on the ratio: with ratios e^0.15 = 1.16 and
    # positive advantages, 0.9 and 1.1 clip them to 1.1; the defaults (0.8, 1.2) do not.
    data = _datums(tokenizer, _current(training, tokenizer), mask=False, offset=0.15)
    tokens = sum(d.model_input.length - 1 for d in data)  # advantage 1 each
    tight = training.forward(data, "ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1})
    assert tight.result(timeout=WAIT).metrics["loss:sum"] == pytest.approx(-1.1 * tokens, rel=1e-4)
    wide = training.forward(data, "ppo").result(timeout=WAIT)
    assert wide.metrics["loss:sum"] == pytest.approx(-math.exp(0.15) * tokens, rel=1e-4)


def test_record_stability_info_is_accepted_and_samples_keep_their_ids(
    server: TinkerServer, service_factory: ServiceFactory, tokenizer: Any
) -> None:
    # The cookbook's rl_loop asks for stability info only for stable_reinforce, which the
    # server refuses at training time; sampling with the flag still answers normally.
    service = service_factory(server)
    training = service.create_lora_training_client(
        base_model=BASE_MODEL, rank=4, seed=5, train_unembed=False
    ).result(timeout=WAIT)
    sampler = training.save_weights_and_get_sampling_client(record_stability_info=True).result(
        timeout=WAIT
    )
    prompt = types.ModelInput.from_ints(tokenizer.encode("The quick"))
    params = types.SamplingParams(max_tokens=4, temperature=1.0, seed=0)
    out = sampler.sample(prompt, 2, params).result(timeout=WAIT)
    ids = [s.sequence_id for s in out.sequences]
    assert len(set(ids)) == 2
    assert all(ids)

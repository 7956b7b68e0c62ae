"""crucible's policy losses on ``backend = "tinker"``: a TrainingJob's Loss goes through
the real tinker SDK to serve-tinker (over crucible-local), and the loss the server
computes is the one crucible-local computes for the same data and logprobs.

The data are built so that the loss depends on every clip bound: ratios well above
and well below 1 with advantages of both signs, weights of 0, 1 and 2. A Loss whose
params reached Tinker as the wrong config (crucible's ``clip_range`` where Tinker
takes ``clip_low_threshold``/``clip_high_threshold``, distances where Tinker takes
bounds, low and high swapped, dro's beta not scaled with the advantages) gives
another loss, or is refused by the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from crucible_local.losses import compute_loss, plan_loss, prepare_batch
from crucible_tinker.backend import TinkerBackend
from crucible_tinker.server import TinkerServer
from crucible_tinker.training import TinkerTrainingSession

from crucible_core.errors import ConfigError
from crucible_core.ir.backend import AdamParams, Datum, LossFnInputs
from crucible_core.ir.training import (
    DatasetSpec,
    LearningConfig,
    LoRA,
    Loss,
    ModelSpec,
    TrainingJob,
)

from .conftest import BASE_MODEL, WAIT

pytestmark = pytest.mark.timeout(120)

TEXTS = ["The quick brown fox.", "Tiny models learn fast."]
#: Sampled logprob = current - offset - bias: each token's ratio is e^(offset + bias),
#: e.g. 1.49, 0.82, 1.13 in the first datum and 1.22, 0.67, 0.92 in the second (whose
#: sequence ratios, gspo's, are about 1.11 and 0.91).
OFFSETS = (0.3, -0.3, 0.02)
BIAS = (0.1, -0.1)
#: Advantages cycling in sign, so a high ratio meets a positive advantage (clipped above)
#: and a low one a negative advantage (clipped below), with unequal magnitudes so that
#: moving both bounds by the same amount changes the loss.
ADVANTAGES = (1.0, -0.25, 0.5)

CASES: list[tuple[str, Loss, bool]] = [
    # (id, loss, whether the datums carry weights other than 1)
    (
        "ppo-asymmetric",
        Loss(name="ppo", params={"clip_range_low": 0.05, "clip_range_high": 0.1}),
        True,
    ),
    ("ppo-symmetric", Loss(name="ppo", params={"clip_range": 0.1}), True),
    (
        "cispo",
        Loss(name="cispo", params={"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
        True,
    ),
    (
        "gspo",
        Loss(name="gspo", params={"clip_low_threshold": 0.95, "clip_high_threshold": 1.05}),
        True,
    ),
    ("dro", Loss(name="dro", params={"beta": 0.5}), False),
]


def _misread(case: str, tokens: int) -> list[Loss]:
    """What a case's params would have trained had they been dropped (Tinker's defaults
    apply), read the other way round, or (dro) sent without the advantages' scaling
    (the penalty ``tokens`` times heavier): the data must tell each from the right one."""
    return {
        "ppo-asymmetric": [
            Loss(name="ppo"),
            Loss(name="ppo", params={"clip_range_low": 0.1, "clip_range_high": 0.05}),
        ],
        "ppo-symmetric": [Loss(name="ppo")],
        "cispo": [Loss(name="cispo")],
        "gspo": [Loss(name="gspo", params={"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})],
        "dro": [Loss(name="dro", params={"beta": 0.5 * tokens})],
    }[case]


def _job(loss: Loss) -> TrainingJob:
    return TrainingJob(
        backend="tinker",
        model_spec=ModelSpec(name=BASE_MODEL),
        adapter_config=LoRA(rank=4, train_unembed=False),
        learning_config=LearningConfig(seed=0, max_steps=4, loss=loss),
        dataset_spec=DatasetSpec(uri="memory:policy-losses"),
    )


@pytest.fixture(scope="module")
def session(server: TinkerServer, local_home: Path) -> Iterator[TinkerTrainingSession]:
    """One LoRA model on the server for every case (each case reads the logprobs its own
    call returns, so the steps the earlier cases took do not matter)."""
    backend = TinkerBackend(
        base_url=server.url,
        api_key=server.api_key,
        tokenizer_backend="local",
        tokenizer_backend_options={"home": str(local_home)},
        model=BASE_MODEL,
        timeout=WAIT,
    )
    s = backend.create_session(_job(CASES[0][1]))
    yield s
    s.close()
    backend.close()


def _batch(session: TinkerTrainingSession, *, weighted: bool) -> list[Datum]:
    """RL datums over TEXTS whose sampled logprobs sit OFFSETS + BIAS below the model's
    current ones; the first target is the prompt's (weight 0 when ``weighted``)."""
    tok = session.tokenizer
    probe = []
    for text in TEXTS:
        ids = tok.encode(text)
        probe.append(
            Datum(model_input=ids[:-1], loss_fn_inputs=LossFnInputs(target_tokens=ids[1:]))
        )
    current = session.forward(probe, Loss(name="cross_entropy")).result(WAIT).logprobs
    out: list[Datum] = []
    for i, (d, lp) in enumerate(zip(probe, current, strict=True)):
        n = len(d.model_input)
        sampled = [x - OFFSETS[t % 3] - BIAS[i] for t, x in enumerate(lp)]
        weights = [0.0 if t == 0 else 1.0 + t % 2 for t in range(n)] if weighted else None
        out.append(
            Datum(
                model_input=d.model_input,
                loss_fn_inputs=LossFnInputs(
                    target_tokens=d.loss_fn_inputs.target_tokens,
                    weights=weights,
                    logprobs=sampled,
                    advantages=[ADVANTAGES[t % 3] for t in range(n)],
                    sequence_ratio_mask=[0.0] + [1.0] * (n - 1),
                ),
            )
        )
    return out


def _local_loss(batch: list[Datum], loss: Loss, logprobs: list[list[float]]) -> float:
    """crucible-local's loss for ``batch`` at these target logprobs."""
    plan = plan_loss(loss)
    prepared = prepare_batch(batch, plan, vocab_rows=1 << 20, context_length=1 << 20)
    width = prepared.input_ids.shape[1]
    padded = torch.tensor([row + [0.0] * (width - len(row)) for row in logprobs])
    value, _ = compute_loss(plan, prepared, padded, grad=False)
    return float(value)


@pytest.mark.parametrize(("case", "loss", "weighted"), CASES, ids=[c[0] for c in CASES])
def test_tinker_backend_trains_the_loss_crucible_local_computes(
    session: TinkerTrainingSession, case: str, loss: Loss, weighted: bool
) -> None:
    batch = _batch(session, weighted=weighted)
    result = session.forward_backward(batch, loss).result(WAIT)
    step = session.optim_step(AdamParams(learning_rate=1e-3)).result(WAIT)
    assert step.grad_norm is not None
    assert step.grad_norm > 0
    expected = _local_loss(batch, loss, result.logprobs)
    assert result.loss == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # The check has teeth: the data give other losses for the params misread.
    for wrong in _misread(case, sum(len(d.model_input) for d in batch)):
        assert abs(_local_loss(batch, wrong, result.logprobs) - expected) > 1e-3, wrong


def test_dro_with_uneven_weights_is_refused_before_any_request(
    session: TinkerTrainingSession,
) -> None:
    # Tinker's dro has no weights and penalises every token: crucible's weighted dro on
    # datums whose prompt weighs 0 has no Tinker equivalent.
    batch = _batch(session, weighted=True)
    with pytest.raises(ConfigError, match="dro loss needs one weight on every token"):
        session.forward(batch, Loss(name="dro", params={"beta": 0.5}))


def test_gspo_without_thresholds_is_refused_as_on_local(session: TinkerTrainingSession) -> None:
    with pytest.raises(ConfigError, match=r"params\.clip_low_threshold: the gspo loss needs it"):
        session.forward(_batch(session, weighted=False), Loss(name="gspo"))

"""Training through the contract: it learns, and every knob does what it says."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from crucible_local.backend import LocalBackend
from crucible_local.schedule import lr_multiplier

from crucible_core.contracts import Sampler, TrainingSession
from crucible_core.ir.backend import AdamParams, Datum, LossFnInputs, Prompt, SamplingParams
from crucible_core.ir.training import (
    SGD,
    AdamW,
    Full,
    LoRA,
    Loss,
    ModelSpec,
    Scheduler,
)

TEXT = "the cat sat on the mat. the dog sat on the log. "


def SGD_STEP(lr: float, clip: float = 0.0) -> AdamParams:
    """Plain SGD step parameters (beta1 is SGD's momentum)."""
    return AdamParams(learning_rate=lr, beta1=0.0, grad_clip_norm=clip)


def test_end_to_end_train_save_sample(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    job = make_job()
    session = backend.create_session(job)
    assert isinstance(session, TrainingSession)
    tok = session.tokenizer
    batch = datums(tok, [TEXT * 2, TEXT[10:] * 2, TEXT[20:] * 2, TEXT[5:] * 2], eos=True)
    initial = session.forward(batch, Loss()).result().loss
    futures = []
    for _ in range(40):
        futures.append(session.forward_backward(batch, Loss()))
        session.optim_step(AdamParams(learning_rate=1e-2))
    losses = [f.result().loss for f in futures]
    final = session.forward(batch, Loss()).result().loss
    assert losses[0] == pytest.approx(initial, rel=1e-5)
    assert final < initial * 0.5, (initial, final)
    assert session.step == 40
    sampler = session.save_weights_for_sampler("final").result()
    assert isinstance(sampler, Sampler)
    [completion] = sampler.sample(
        Prompt(text="the cat"), SamplingParams(max_tokens=30, temperature=0.0)
    ).result()
    assert completion.text.strip()
    # An untrained model emits arbitrary bytes; this one writes in the corpus' alphabet.
    assert set(completion.text) <= set(TEXT), completion.text
    assert len(completion.tokens) == len(completion.logprobs or []) > 0
    assert completion.model == "tiny-llama"
    assert completion.backend_id == "local"


@pytest.mark.parametrize(
    ("model", "adapter"),
    [
        ("tiny-llama", Full()),
        ("tiny-gpt2", LoRA(rank=8, alpha=16, dropout=0.0, target_modules=["all-linear"])),
        ("tiny-gpt2", Full()),
        ("tiny-llama/bfloat16", LoRA(rank=8, alpha=16, dropout=0.0, target_modules=["all-linear"])),
    ],
)
def test_other_models_and_full_fine_tuning_learn(
    backend: LocalBackend,
    make_job: Callable[..., Any],
    datums: Callable[..., list[Datum]],
    run_steps: Callable[..., list[float]],
    model: str,
    adapter: Any,
) -> None:
    name, _, dtype = model.partition("/")
    spec = ModelSpec(name=name, dtype=dtype or "float32")  # type: ignore[arg-type]
    session = backend.create_session(make_job(model_spec=spec, adapter_config=adapter))
    batch = datums(session.tokenizer)
    losses = run_steps(session, batch, 15, lr=3e-3)
    assert losses[-1] < losses[0] * 0.8, losses
    expected = sum(p.numel() for p in session.torch_model.parameters())
    if isinstance(adapter, Full):
        assert session.num_trainable_parameters == expected
    else:
        assert 0 < session.num_trainable_parameters < expected


def test_logprobs_are_the_models_target_token_logprobs(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    session = backend.create_session(make_job())
    batch = datums(session.tokenizer, ["hello world", "a much longer example sentence"])
    result = session.forward(batch, Loss()).result()
    model = session.torch_model
    model.eval()
    for datum, lps in zip(batch, result.logprobs, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([datum.model_input])).logits[0]
        expected = torch.log_softmax(logits, -1)[
            torch.arange(len(datum.model_input)), torch.tensor(datum.loss_fn_inputs.target_tokens)
        ]
        assert lps == pytest.approx(expected.tolist(), abs=1e-5)
    assert result.num_tokens == sum(len(d.model_input) for d in batch)
    flat = [v for lps in result.logprobs for v in lps]
    assert result.loss == pytest.approx(-sum(flat) / len(flat), rel=1e-6)
    assert result.metrics["loss:sum"] == pytest.approx(-sum(flat), rel=1e-6)


def test_calls_are_applied_in_submission_order(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    session = backend.create_session(make_job())
    batch = datums(session.tokenizer)
    steps = []
    fbs = []
    for _ in range(5):
        fbs.append(session.forward_backward(batch, Loss()))
        steps.append(session.optim_step(AdamParams(learning_rate=1e-2)))
    evaluation = session.forward(batch, Loss())
    assert [s.result().step for s in steps] == [1, 2, 3, 4, 5]
    assert session.step == 5
    # The forward queued last sees the weights after all five steps.
    assert evaluation.result().loss < fbs[-1].result().loss


def test_gradients_of_several_calls_are_averaged(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    texts = ["abcdefgh", "ijklmnop", "qrstuvwx", "yzabcdef"]  # equal lengths
    one = backend.create_session(make_job(optimizer=SGD(lr=0.5)))
    two = backend.create_session(make_job(optimizer=SGD(lr=0.5)))
    batch = datums(one.tokenizer, texts)
    one.forward_backward(batch, Loss())
    first = one.optim_step(SGD_STEP(0.5)).result()
    two.forward_backward(batch[:2], Loss())
    two.forward_backward(batch[2:], Loss())
    second = two.optim_step(SGD_STEP(0.5)).result()
    assert second.metrics["accumulated_calls"] == 2
    assert second.grad_norm == pytest.approx(first.grad_norm, rel=1e-5)
    for (name, a), b in zip(
        one.torch_model.named_parameters(), two.torch_model.parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name


def test_session_schedule_warms_up_then_decays(
    tmp_path: Path, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    scheduler = Scheduler(name="cosine", warmup_steps=2, min_lr_ratio=0.1)
    backend = LocalBackend(home=tmp_path, lr_schedule="session", num_threads=1)
    session = backend.create_session(make_job(scheduler=scheduler, max_steps=6))
    batch = datums(session.tokenizer)
    rates = []
    for _ in range(7):
        session.forward_backward(batch, Loss())
        rates.append(session.optim_step(AdamParams(learning_rate=1e-2)).result().learning_rate)
    assert rates[0] == pytest.approx(5e-3)
    assert rates[1] == pytest.approx(1e-2)
    assert rates[2] == pytest.approx(1e-2)
    assert rates[3] == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert rates[6] == pytest.approx(1e-3)
    assert rates == pytest.approx([1e-2 * lr_multiplier(scheduler, s, 6) for s in range(7)])
    backend.close()


def test_by_default_the_caller_owns_the_schedule(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    assert [lr_multiplier(Scheduler(name="linear"), s, 4) for s in range(5)] == [
        1.0,
        0.75,
        0.5,
        0.25,
        0.0,
    ]
    # crucible's loop (like Tinker's clients) sends each step's scheduled rate itself.
    session = backend.create_session(make_job(scheduler=Scheduler(name="linear", warmup_steps=3)))
    batch = datums(session.tokenizer)
    for rate in (0.02, 0.01, 0.005):
        session.forward_backward(batch, Loss())
        result = session.optim_step(AdamParams(learning_rate=rate)).result()
        assert result.learning_rate == rate
        assert result.metrics["lr_multiplier"] == 1.0


def test_adam_params_set_every_step(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    session = backend.create_session(make_job(optimizer=AdamW(lr=3e-3, weight_decay=0.1)))
    batch = datums(session.tokenizer)
    group = session._optimizer.param_groups[0]  # pyright: ignore[reportPrivateUsage]
    assert (group["lr"], group["weight_decay"]) == (3e-3, 0.1)  # the job's, until a step
    session.forward_backward(batch, Loss())
    params = AdamParams(learning_rate=1e-3, beta1=0.5, beta2=0.99, eps=1e-6, weight_decay=0.2)
    result = session.optim_step(params).result()
    assert result.learning_rate == 1e-3
    assert result.metrics["grad_clip"] == 0.0  # grad_clip_norm 0: no clipping
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        1e-3,
        (0.5, 0.99),
        1e-6,
        0.2,
    )
    session.forward_backward(batch, Loss())
    assert session.optim_step(AdamParams(grad_clip_norm=0.5)).result().metrics["grad_clip"] == 0.5
    # SGD: beta1 carries the momentum (as crucible's loop sends it).
    sgd = backend.create_session(make_job(optimizer=SGD(lr=0.1, momentum=0.3)))
    sgd.forward_backward(batch, Loss())
    sgd.optim_step(AdamParams(learning_rate=0.1, beta1=0.3)).result()
    sgd_group = sgd._optimizer.param_groups[0]  # pyright: ignore[reportPrivateUsage]
    assert (sgd_group["lr"], sgd_group["momentum"]) == (0.1, 0.3)


def test_sgd_trains_and_clipping_bounds_the_update(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    session = backend.create_session(make_job(optimizer=SGD(lr=1.0, grad_clip=1e-3)))
    batch = datums(session.tokenizer)
    before = {n: p.detach().clone() for n, p in session.torch_model.named_parameters()}
    session.forward_backward(batch, Loss())
    result = session.optim_step(SGD_STEP(1.0, clip=1e-3)).result()
    assert result.grad_norm is not None
    assert result.grad_norm > 1e-3
    delta = torch.sqrt(
        sum(
            ((p.detach() - before[n]) ** 2).sum() for n, p in session.torch_model.named_parameters()
        )
    )
    # Plain SGD with lr 1: the update is the clipped gradient, of norm exactly the clip.
    assert float(delta) == pytest.approx(1e-3, rel=1e-3)
    plain = backend.create_session(make_job(optimizer=SGD(lr=0.5)))
    losses = []
    for _ in range(8):
        losses.append(plain.forward_backward(batch, Loss()).result().loss)
        plain.optim_step(SGD_STEP(0.5))
    assert losses[-1] < losses[0]


def test_weights_mask_tokens_out_of_the_loss(
    backend: LocalBackend, make_job: Callable[..., Any]
) -> None:
    session = backend.create_session(make_job())
    ids = session.tokenizer.encode("question? answer!")
    n = len(ids) - 1
    weights = [0.0] * 9 + [1.0] * (n - 9)
    datum = Datum(
        model_input=ids[:-1],
        loss_fn_inputs=LossFnInputs(target_tokens=ids[1:], weights=weights),
    )
    result = session.forward([datum], Loss()).result()
    lps = result.logprobs[0]
    assert result.loss == pytest.approx(-sum(lps[9:]) / (n - 9), rel=1e-6)
    assert result.metrics["tokens"] == n - 9


def test_forward_neither_trains_nor_draws_randomness(
    backend: LocalBackend, make_job: Callable[..., Any], datums: Callable[..., list[Datum]]
) -> None:
    job = make_job(adapter_config=LoRA(rank=4, alpha=8, dropout=0.3, target_modules=["q_proj"]))
    plain = backend.create_session(job)
    probed = backend.create_session(job)
    batch = datums(plain.tokenizer)
    for session in (plain, probed):
        session.forward_backward(batch, Loss())
        session.optim_step(AdamParams(learning_rate=1e-2))
    a = probed.forward(batch, Loss()).result()
    b = probed.forward(batch, Loss()).result()
    assert a.loss == b.loss
    assert probed.step == 1
    # Dropout (0.3) makes train-mode passes random; the forwards above drew nothing,
    # so both sessions' next passes still see the same random stream.
    c = plain.forward_backward(batch, Loss()).result()
    d = probed.forward_backward(batch, Loss()).result()
    assert c.loss == d.loss
    assert c.loss != a.loss

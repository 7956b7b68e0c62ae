"""The unmodified tinker SDK against the server (crucible-local behind it), over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tinker
import torch
from crucible_tinker.server import TinkerServer
from tinker import types

from .conftest import BASE_MODEL, WAIT, ServiceFactory, byte_datums

pytestmark = pytest.mark.timeout(240)


def _loss_sum(out: types.ForwardBackwardOutput) -> float:
    return float(out.metrics["loss:sum"])


def test_lora_supervised_loop_then_sample(
    server: TinkerServer, service_factory: ServiceFactory, tokenizer: Any
) -> None:
    service = service_factory(server)
    training = service.create_lora_training_client(
        base_model=BASE_MODEL, rank=8, seed=0, train_unembed=False
    ).result(timeout=WAIT)
    assert training.model_id.endswith(":train:0")
    info = training.get_info()
    assert info.model_data.model_name == BASE_MODEL
    assert info.lora_rank == 8

    data = byte_datums(tokenizer)  # 5 datums -> 3 chunks of <= 2, POSTed concurrently
    before = server.engine.stats["out_of_order_arrivals"]
    losses: list[float] = []
    # Pipelined as Tinker intends: both calls submitted before either result is read.
    for _ in range(6):
        fb = training.forward_backward(data, "cross_entropy")
        opt = training.optim_step(types.AdamParams(learning_rate=2e-2))
        out = fb.result(timeout=WAIT)
        opt.result(timeout=WAIT)
        assert len(out.loss_fn_outputs) == len(data)
        lp = out.loss_fn_outputs[0]["logprobs"].to_numpy()
        assert lp.shape == (data[0].model_input.length,)
        assert np.all(lp <= 1e-4)
        losses.append(_loss_sum(out))
    assert losses[-1] < losses[0] * 0.9, losses
    # The first chunk of every batch is sent last: the server buffered out-of-order arrivals.
    assert server.engine.stats["out_of_order_arrivals"] > before

    steps = [s for s in server.applied_steps() if s[0] == training.model_id]
    assert [s[2] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert len({s[1] for s in steps}) == 6  # each optimizer step applied once

    saved = training.save_weights_for_sampler("after-six").result(timeout=WAIT)
    assert saved.path == f"tinker://{training.model_id}/sampler_weights/after-six"
    sampler = service.create_sampling_client(model_path=saved.path).result(timeout=WAIT)
    assert sampler.get_base_model() == BASE_MODEL
    prompt = types.ModelInput.from_ints(tokenizer.encode("The quick"))
    params = types.SamplingParams(max_tokens=12, temperature=0.0)
    result = sampler.sample(prompt, 2, params).result(timeout=WAIT)
    assert len(result.sequences) == 2
    first = result.sequences[0]
    assert 0 < len(first.tokens) <= 12
    assert first.logprobs is not None
    assert len(first.logprobs) == len(first.tokens)
    assert first.sequence_id != result.sequences[1].sequence_id
    assert result.sequences[1].tokens == first.tokens  # greedy
    text = tokenizer.decode(first.tokens)
    assert isinstance(text, str)
    assert text

    # The in-place sampler of the current weights gives the same greedy text.
    live = training.save_weights_and_get_sampling_client().result(timeout=WAIT)
    again = live.sample(prompt, 1, params).result(timeout=WAIT)
    assert again.sequences[0].tokens == first.tokens


def test_save_state_and_resume_with_optimizer(
    server: TinkerServer, service_factory: ServiceFactory, tokenizer: Any
) -> None:
    service = service_factory(server)
    training = service.create_lora_training_client(
        base_model=BASE_MODEL, rank=4, seed=1, train_unembed=False
    ).result(timeout=WAIT)
    data = byte_datums(tokenizer)[:2]
    for _ in range(2):
        training.forward_backward(data, "cross_entropy")
        training.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=WAIT)
    state = training.save_state("two-steps").result(timeout=WAIT)
    assert state.path == f"tinker://{training.model_id}/weights/two-steps"
    at_save = _loss_sum(training.forward(data, "cross_entropy").result(timeout=WAIT))
    # Train on: the saved state must not move.
    training.forward_backward(data, "cross_entropy")
    training.optim_step(types.AdamParams(learning_rate=5e-2)).result(timeout=WAIT)
    moved = _loss_sum(training.forward(data, "cross_entropy").result(timeout=WAIT))
    assert moved != pytest.approx(at_save, rel=1e-6)

    resumed = service.create_training_client_from_state_with_optimizer(state.path).result(
        timeout=WAIT
    )
    assert resumed.model_id != training.model_id
    restored = _loss_sum(resumed.forward(data, "cross_entropy").result(timeout=WAIT))
    assert restored == pytest.approx(at_save, rel=1e-5)
    # The resumed model trains on (its seq ids start again at 1).
    resumed.forward_backward(data, "cross_entropy")
    resumed.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=WAIT)


def test_custom_loss_through_forward_backward_custom(
    server: TinkerServer, service_factory: ServiceFactory, tokenizer: Any
) -> None:
    service = service_factory(server)
    training = service.create_lora_training_client(
        base_model=BASE_MODEL, rank=4, seed=2, train_unembed=False
    ).result(timeout=WAIT)
    data = byte_datums(tokenizer)[:3]
    calls: list[int] = []

    def neg_mean_logprob(batch: list[types.Datum], logprobs: list[torch.Tensor]) -> Any:
        calls.append(len(batch))
        loss = -torch.cat(logprobs).mean()
        return loss, {"custom:mean": float(loss.detach())}

    first = training.forward_backward_custom(data, neg_mean_logprob).result(timeout=WAIT)
    training.optim_step(types.AdamParams(learning_rate=2e-2)).result(timeout=WAIT)
    for _ in range(3):
        training.forward_backward_custom(data, neg_mean_logprob)
        training.optim_step(types.AdamParams(learning_rate=2e-2)).result(timeout=WAIT)
    last = training.forward_backward_custom(data, neg_mean_logprob).result(timeout=WAIT)
    assert calls == [3] * 5
    assert "surrogate_loss:sum" in first.metrics  # the SDK's custom path ran end to end
    assert last.metrics["custom:mean"] < first.metrics["custom:mean"]


def test_wrong_api_key_is_refused_fast(server: TinkerServer) -> None:
    client = tinker.ServiceClient(base_url=server.url, api_key="tml-not-the-key")
    try:
        with pytest.raises(tinker.AuthenticationError):
            client.create_lora_training_client(base_model=BASE_MODEL, rank=4).result(timeout=WAIT)
    finally:
        client.close("errored").result(timeout=WAIT)


def test_rest_client_reads_capabilities(server: TinkerServer) -> None:
    rest = tinker.RestClient(base_url=server.url, api_key=server.api_key)
    caps = rest.get_server_capabilities().result(timeout=WAIT)
    names = [m.model_name for m in caps.supported_models]
    assert BASE_MODEL in names


def test_zstd_bodies_over_the_pyqwest_transport(
    local_home: Path, service_factory: ServiceFactory, tokenizer: Any
) -> None:
    """The SDK's defaults against Tinker: zstd-compressed fwd/bwd bodies when the server asks
    for them, and the pyqwest (reqwest) HTTP transport."""
    with TinkerServer(
        "local",
        backend_options={"home": str(local_home)},
        proto_compress_fwdbwd=True,
        use_pyqwest_transport=True,
    ) as srv:
        service = service_factory(srv)
        training = service.create_lora_training_client(
            base_model=BASE_MODEL, rank=4, train_unembed=False
        ).result(timeout=WAIT)
        data = byte_datums(tokenizer)[:2]
        out = training.forward_backward(data, "cross_entropy").result(timeout=WAIT)
        training.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=WAIT)
        assert len(out.loss_fn_outputs) == 2
        assert srv.engine.stats.get("bodies:zstd", 0) >= 1
        service.close("success").result(timeout=WAIT)

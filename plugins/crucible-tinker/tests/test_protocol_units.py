"""The protocol layer on its own: id formats, ordering buffer, protobuf codec, futures store."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import zstandard
from crucible_tinker.losses import crucible_params
from crucible_tinker.server import ids
from crucible_tinker.server.futures import Failure, FutureStore, Payload
from crucible_tinker.server.ordering import OrderedQueue, StaleSequence
from crucible_tinker.server.payloads import (
    decode_forward_backward,
    encode_forward_backward_output,
    encode_sample_response,
    sanitize_metrics,
)
from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto
from tinker.proto.response_conv import (
    deserialize_forward_backward_output,
    deserialize_sample_response,
)
from tinker.types.checkpoint import ParsedCheckpointTinkerPath

from crucible_core.errors import ConfigError, UnsupportedError, ValidationError
from crucible_core.ir.backend import Completion, Datum, ForwardBackwardResult, LossFnInputs


def test_model_id_is_what_the_sdk_derives_and_parses_back() -> None:
    sid = ids.new_session_id()
    mid = ids.model_id(sid, 3)
    # The SDK computes f"{session_id}:train:{model_seq_id}" itself for create-via-load.
    assert mid == f"{sid}:train:3"
    assert ids.parse_model_id(mid) == (sid, 3)
    assert ids.parse_model_id("not-a-model") is None
    assert ids.sampling_session_id(sid, 2) == f"{sid}:sample:2"
    assert ids.sequence_ids("req-1", 3) == ["req-1:0", "req-1:1", "req-1:2"]


def test_checkpoint_paths_round_trip_and_satisfy_the_sdk_parser() -> None:
    mid = ids.model_id("sess-ab", 0)
    for kind, segment, sdk_type in (
        ("state", "weights", "training"),
        ("sampler", "sampler_weights", "sampler"),
    ):
        path = ids.CheckpointPath.make(mid, kind, "step-10")  # type: ignore[arg-type]
        assert path.uri == f"tinker://{mid}/{segment}/step-10"
        assert ids.CheckpointPath.parse(path.uri) == path
        parsed = ParsedCheckpointTinkerPath.from_tinker_path(path.uri)
        assert parsed.checkpoint_type == sdk_type
        assert parsed.training_run_id == mid
    with pytest.raises(ValueError, match="no '/'"):
        ids.CheckpointPath.make(mid, "state", "a/b")
    with pytest.raises(ValueError, match="form"):
        ids.CheckpointPath.parse("tinker://run/weights")
    with pytest.raises(ValueError, match="kind"):
        ids.CheckpointPath.parse("tinker://run/other/x")


def test_ordered_queue_releases_by_seq_and_dedupes() -> None:
    q: OrderedQueue[str] = OrderedQueue(first_seq=1)
    assert q.offer(3, "r3", "c").out_of_order
    assert q.offer(2, "r2", "b").out_of_order
    assert q.take(timeout=0.01) is None  # 1 has not arrived: nothing may run
    first = q.offer(1, "r1", "a")
    assert first.accepted
    assert not first.out_of_order
    assert [q.take(timeout=1), q.take(timeout=1), q.take(timeout=1)] == ["a", "b", "c"]
    dup = q.offer(2, "other", "b-again")
    assert not dup.accepted
    assert dup.request_id == "r2"
    with pytest.raises(StaleSequence):
        q.offer(0, "r0", "z")
    q.offer(5, "r5", "e")
    assert q.close() == ["e"]
    assert q.take(timeout=1) is None


def test_ordered_queue_take_wakes_on_arrival_from_another_thread() -> None:
    q: OrderedQueue[int] = OrderedQueue(first_seq=0)
    got: list[int | None] = []
    t = threading.Thread(target=lambda: got.append(q.take(timeout=5)))
    t.start()
    time.sleep(0.05)
    q.offer(0, "r", 42)
    t.join(5)
    assert got == [42]


def _tinker_datum(tokens: list[int]) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
    )


def _sdk_body(data: list[types.Datum], loss_fn: str = "cross_entropy", **cfg: float) -> bytes:
    request = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(
            data=data,
            loss_fn=loss_fn,
            loss_fn_config=cfg or None,  # type: ignore[arg-type]
        ),
        model_id="sess-x:train:0",
        seq_id=7,
    )
    msg = forward_backward_request_to_proto(request)
    return msg.SerializeToString()


def test_forward_backward_request_decodes_what_the_sdk_encodes() -> None:
    body = _sdk_body([_tinker_datum([5, 6, 7, 8]), _tinker_datum([1, 2, 3])], clip=0.2)
    req = decode_forward_backward(body)
    assert (req.model_id, req.seq_id, req.loss_fn, req.forward_only) == (
        "sess-x:train:0",
        7,
        "cross_entropy",
        False,
    )
    assert req.loss_fn_config == {"clip": pytest.approx(0.2)}
    datums = req.datums()
    assert datums[0].model_input == [5, 6, 7]
    assert datums[0].loss_fn_inputs.target_tokens == [6, 7, 8]
    assert datums[1].loss_fn_inputs.weights == [1.0, 1.0]


def test_zstd_bodies_are_decompressed() -> None:
    body = _sdk_body([_tinker_datum([1, 2, 3, 4])])
    packed = zstandard.ZstdCompressor().compress(body)
    assert decode_forward_backward(packed, "zstd").datums()[0].model_input == [1, 2, 3]
    with pytest.raises(ValidationError):
        decode_forward_backward(b"not zstd", "zstd")
    with pytest.raises(UnsupportedError):
        decode_forward_backward(body, "br")


def test_unsupported_loss_inputs_are_user_errors() -> None:
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": [2, 3], "clip_low_threshold": [0.1, 0.1]},
    )
    req = decode_forward_backward(_sdk_body([datum]))
    with pytest.raises(UnsupportedError, match="clip_low_threshold"):
        req.datums()
    with pytest.raises(ValidationError):
        decode_forward_backward(b"\xff\xff\xff")


def test_forward_backward_output_is_read_by_the_sdk_decoder() -> None:
    batch = [
        Datum(model_input=[1, 2, 3], loss_fn_inputs=LossFnInputs(target_tokens=[2, 3, 4])),
        Datum(
            model_input=[5, 6],
            loss_fn_inputs=LossFnInputs(target_tokens=[6, 7], weights=[0.0, 2.0]),
        ),
    ]
    result = ForwardBackwardResult(
        loss=1.0,
        logprobs=[[-0.5, -1.0, -1.5], [-2.0, -0.25]],
        metrics={"grad_norm:max": 3.0, "grad:norm": 4.0, "odd": 1.0, "loss": 9.0},
    )
    out = deserialize_forward_backward_output(
        encode_forward_backward_output(result, batch, "cross_entropy")
    )
    assert len(out.loss_fn_outputs) == 2
    np.testing.assert_allclose(out.loss_fn_outputs[0]["logprobs"].to_numpy(), [-0.5, -1.0, -1.5])
    np.testing.assert_allclose(out.loss_fn_outputs[1]["elementwise_loss"].to_numpy(), [0.0, 0.5])
    # loss:sum = -sum(logprob * weight) when the backend reports none
    assert out.metrics["loss:sum"] == pytest.approx(3.0 + 0.5)
    assert out.metrics["grad_norm:max"] == 3.0
    assert out.metrics["odd:mean"] == 1.0
    assert out.metrics["grad_norm:mean"] == 4.0  # not a reduction: made one
    assert all(k.count(":") == 1 for k in out.metrics)  # the SDK splits every key on ":"


def test_sanitize_metrics_never_emits_keys_the_sdk_cannot_split() -> None:
    got = sanitize_metrics({"a:b:sum": 1.0, "x:sum": 2.0, "nan": float("nan"), "loss": 5.0})
    assert got == {"a_b_sum:mean": 1.0, "x:sum": 2.0}


def test_sample_response_is_read_by_the_sdk_decoder() -> None:
    completions = [
        Completion(text="", tokens=[1, 2, 3], logprobs=[-0.1, -0.2, -0.3], finish_reason="length"),
        Completion(text="", tokens=[9], logprobs=None, finish_reason="stop"),
    ]
    out = deserialize_sample_response(encode_sample_response(completions))
    assert [s.tokens for s in out.sequences] == [[1, 2, 3], [9]]
    assert [s.stop_reason for s in out.sequences] == ["length", "stop"]
    assert out.sequences[0].logprobs == pytest.approx([-0.1, -0.2, -0.3])
    assert out.sequences[1].logprobs is None


def test_future_store_long_polls_and_resolves_from_threads() -> None:
    async def scenario() -> None:
        store = FutureStore(asyncio.get_running_loop(), ttl_s=60)
        entry = store.create("optim_step")
        assert store.get(entry.request_id) is entry
        start = time.monotonic()
        assert not await entry.wait(0.05)  # pending: the poll times out
        assert time.monotonic() - start >= 0.04
        threading.Timer(0.05, entry.resolve, args=(Payload(b"{}"),)).start()
        assert await entry.wait(5)
        assert entry.outcome() == Payload(b"{}")
        entry.fail("too late")  # the first resolution wins
        assert not entry.failed
        other = store.create("sample")
        other.fail("bad prompt", "user")
        assert other.failed
        assert other.outcome() == Failure("bad prompt", "user")
        assert store.get("req-unknown") is None

    asyncio.run(scenario())


def test_fault_injector_is_seeded_and_scoped() -> None:
    from crucible_tinker.server.config import FaultConfig
    from crucible_tinker.server.faults import FaultInjector

    config = FaultConfig(
        seed=3, error_fraction=0.3, drop_fraction=0.2, paths=frozenset({"optim_step"})
    )
    a, b = FaultInjector(config), FaultInjector(config)
    paths = ["/api/v1/optim_step"] * 50
    assert [a.decide(p) for p in paths] == [b.decide(p) for p in paths]
    assert a.counts["errors"] > 0
    assert a.decide("/api/v1/forward_backward") == a.decide("/api/v1/healthz")  # not in scope
    assert not a.decide("/api/v1/forward_backward").error
    a.configure(FaultConfig())
    assert a.counts == {}
    assert all(a.decide(p) == a.decide("/x") for p in paths[:3])
    with pytest.raises(ValueError, match="5xx"):
        FaultConfig(error_status=404)


def test_sdk_errors_keep_the_servers_request_id() -> None:
    """A failed future and an HTTP error keep the id the server gave (issue 8: remote calls
    fail loudly and traceably). The exceptions are built directly: they are the SDK's own
    types, raised the same way when a server answers like this."""
    import httpx
    import tinker
    from crucible_tinker.backend import map_error

    from crucible_core.errors import BackendError

    failed = map_error(tinker.RequestFailedError("boom", "req-42", "server"), "optim_step", None)  # type: ignore[arg-type]
    assert isinstance(failed, BackendError)
    assert failed.details["request_id"] == "req-42"
    assert failed.to_dict()["request_id"] == "req-42"
    request = httpx.Request("POST", "http://127.0.0.1:9/api/v1/optim_step")
    response = httpx.Response(500, headers={"x-request-id": "srv-7"}, request=request)
    status = map_error(
        tinker.InternalServerError("oops", response=response, body=None), "optim_step", None
    )
    assert status.details["request_id"] == "srv-7"
    assert status.details["status"] == 500


def test_loss_fn_config_becomes_the_losses_params() -> None:
    # Tinker's names pass through where crucible's loss takes the same ones...
    cispo = {"clip_low_threshold": 0.7, "clip_high_threshold": 1.3}
    assert crucible_params("cispo", cispo) == cispo
    assert crucible_params("dro", {"beta": 0.05}) == {"beta": 0.05}
    # ... ppo's bounds on the ratio become distances from 1.
    ppo = crucible_params("ppo", {"clip_low_threshold": 0.75, "clip_high_threshold": 1.5})
    assert ppo == pytest.approx({"clip_range_low": 0.25, "clip_range_high": 0.5})
    # Keys Tinker does not document are refused, crucible's own ppo names included: a
    # client that sends them to Tinker would not get a clipped ppo either.
    with pytest.raises(ConfigError, match=r"'clip_range' not understood by Tinker's ppo"):
        crucible_params("ppo", {"clip_range": 0.1})
    with pytest.raises(ConfigError, match=r"'beta' not understood by Tinker's cross_entropy"):
        crucible_params("cross_entropy", {"beta": 0.1})
    with pytest.raises(ConfigError, match=r"clip_low_threshold = 1\.0: .* in \(0, 1\)"):
        crucible_params("ppo", {"clip_low_threshold": 1.0})
    with pytest.raises(ConfigError, match=r"clip_high_threshold = 0\.9: .* above 1"):
        crucible_params("ppo", {"clip_high_threshold": 0.9})
    with pytest.raises(ConfigError, match="expected a number"):
        crucible_params("ppo", {"clip_high_threshold": "wide"})

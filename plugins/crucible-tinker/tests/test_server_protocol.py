"""The wire protocol over raw HTTP (httpx), for what the SDK never shows directly:
auth, ordering of out-of-order arrivals, deduplication, long-polling, error categories,
session lifecycle."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from crucible_tinker.server import TinkerServer
from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto
from tinker.proto.response_conv import deserialize_forward_backward_output

from .conftest import BASE_MODEL, byte_datums

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def quick(local_home: Path) -> Iterator[TinkerServer]:
    """A server with a short long-poll, so that a pending result answers try_again fast."""
    srv = TinkerServer("local", backend_options={"home": str(local_home)}, long_poll_s=0.3)
    srv.start(timeout=60)
    yield srv
    srv.stop()


class Raw:
    def __init__(self, srv: TinkerServer) -> None:
        self.srv = srv
        self.http = httpx.Client(
            base_url=f"{srv.url}/api/v1", headers={"X-API-Key": srv.api_key}, timeout=30
        )

    def post(self, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return self.http.post(path, json=body, headers=headers)

    def ok(self, path: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
        r = self.post(path, body, **headers)
        assert r.status_code == 200, r.text
        return r.json()

    def result(self, request_id: str, *, polls: int = 200) -> httpx.Response:
        for _ in range(polls):
            r = self.post("retrieve_future", {"request_id": request_id})
            assert r.status_code == 200, r.text
            pending = r.headers["content-type"].startswith("application/json") and (
                r.json().get("type") == "try_again"
            )
            if not pending:
                return r
        raise AssertionError(f"{request_id} never finished")

    def model(self) -> tuple[str, str]:
        sid = self.ok("create_session", {"tags": [], "user_metadata": {}, "sdk_version": "t"})[
            "session_id"
        ]
        fut = self.ok(
            "create_model",
            {
                "session_id": sid,
                "model_seq_id": 0,
                "base_model": BASE_MODEL,
                "lora_config": {"rank": 4, "train_unembed": False},
                "type": "create_model",
            },
        )
        assert self.result(fut["request_id"]).json()["model_id"] == fut["model_id"]
        return sid, fut["model_id"]

    def fwdbwd(
        self,
        model_id: str,
        seq: int,
        data: list[types.Datum],
        *,
        forward_only: bool = False,
        loss: str = "cross_entropy",
        **headers: str,
    ) -> httpx.Response:
        req = types.ForwardBackwardRequest(
            forward_backward_input=types.ForwardBackwardInput(data=data, loss_fn=loss),  # type: ignore[arg-type]
            model_id=model_id,
            seq_id=seq,
        )
        msg = forward_backward_request_to_proto(req)
        msg.forward_only = forward_only
        return self.http.post(
            "forward_backward",
            content=msg.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf", **headers},
        )

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def raw(quick: TinkerServer) -> Iterator[Raw]:
    r = Raw(quick)
    yield r
    r.close()


def test_auth_is_required_except_for_health(quick: TinkerServer) -> None:
    with httpx.Client(base_url=f"{quick.url}/api/v1", timeout=10) as http:
        assert http.get("healthz").json() == {"status": "ok"}
        assert http.post("create_session", json={}).status_code == 401
        denied = http.post("create_session", json={}, headers={"X-API-Key": "tml-wrong"})
        assert denied.status_code == 401
        cfg = http.post(
            "client/config", json={"sdk_version": "0.38.0"}, headers={"X-API-Key": quick.api_key}
        ).json()
    assert cfg["pjwt_auth_enabled"] is False
    assert cfg["use_pyqwest_transport"] is False


def test_out_of_order_arrivals_run_in_seq_order(raw: Raw, tokenizer: Any) -> None:
    _, model_id = raw.model()
    data = byte_datums(tokenizer)[:2]
    # seq 1: forward (no gradient), seq 2: forward_backward, seq 3: optim_step, seq 4: forward.
    # They arrive 4, 3, 2, 1: nothing may run before seq 1 is in.
    f4 = raw.fwdbwd(model_id, 4, data, forward_only=True).json()["request_id"]
    o3 = raw.ok(
        "optim_step",
        {"model_id": model_id, "seq_id": 3, "adam_params": {"learning_rate": 0.05}},
    )["request_id"]
    b2 = raw.fwdbwd(model_id, 2, data).json()["request_id"]
    pending = raw.post("retrieve_future", {"request_id": o3}).json()
    assert pending["type"] == "try_again"  # held: seq 1 has not arrived
    f1 = raw.fwdbwd(model_id, 1, data, forward_only=True).json()["request_id"]
    outs = {rid: raw.result(rid) for rid in (f1, b2, f4)}
    assert raw.result(o3).json()["metrics"]["step"] == 1.0
    losses = {
        rid: deserialize_forward_backward_output(r.content).metrics["loss:sum"]
        for rid, r in outs.items()
    }
    assert losses[f1] == pytest.approx(losses[b2], rel=1e-5)  # same weights before the step
    assert losses[f4] < losses[f1]  # after the step
    futures = raw.srv.engine.futures
    done = [futures.get(rid).completed_at for rid in (f1, b2, o3, f4)]
    assert done == sorted(done)
    assert raw.srv.engine.stats["out_of_order_arrivals"] >= 3


def test_retried_submissions_are_applied_once(raw: Raw, tokenizer: Any) -> None:
    _, model_id = raw.model()
    data = byte_datums(tokenizer)[:1]
    engine = raw.srv.engine
    key = str(uuid.uuid4())
    first = raw.fwdbwd(model_id, 1, data, **{"X-Idempotency-Key": key}).json()
    again = raw.fwdbwd(model_id, 1, data, **{"X-Idempotency-Key": key}).json()
    assert again == first  # the HTTP layer's retry: same key, same answer
    other_key = raw.fwdbwd(model_id, 1, data, **{"X-Idempotency-Key": str(uuid.uuid4())})
    assert other_key.json()["request_id"] == first["request_id"]  # outer retry: same seq_id
    body = {"model_id": model_id, "seq_id": 2, "adam_params": {"learning_rate": 0.01}}
    step = raw.ok("optim_step", body)
    for _ in range(3):
        assert raw.ok("optim_step", body)["request_id"] == step["request_id"]
    raw.result(step["request_id"])
    applied = [s for s in raw.srv.applied_steps() if s[0] == model_id]
    assert applied == [(model_id, 2, 1)]
    assert engine.stats["duplicate_submissions"] >= 4


def test_errors_carry_the_sdk_categories(raw: Raw, tokenizer: Any) -> None:
    _, model_id = raw.model()
    data = byte_datums(tokenizer)[:1]
    rid = raw.fwdbwd(model_id, 1, data, loss="stable_reinforce").json()["request_id"]
    failed = raw.result(rid).json()
    assert failed["category"] == "user"
    assert "stable_reinforce" in failed["error"]
    # The failed op still consumed its seq_id: the next one runs.
    ok = raw.fwdbwd(model_id, 2, data, forward_only=True).json()["request_id"]
    assert raw.result(ok).headers["content-type"] == "application/x-protobuf"
    stale = raw.post("optim_step", {"model_id": model_id, "seq_id": 0, "adam_params": {}})
    assert stale.status_code == 400
    assert raw.post("retrieve_future", {"request_id": "req-nope"}).status_code == 410
    bad = raw.http.post(
        "forward_backward", content=b"\xff\x00garbage", headers={"Content-Type": "x"}
    )
    assert bad.status_code == 400
    assert raw.post("get_info", {"model_id": "sess-x:train:9"}).status_code == 404


def test_session_lifecycle_heartbeat_telemetry_finish(raw: Raw) -> None:
    sid, model_id = raw.model()
    assert raw.ok("session_heartbeat", {"session_id": sid, "type": "session_heartbeat"}) == {
        "type": "session_heartbeat"
    }
    telemetry = {
        "events": [],
        "platform": "test",
        "sdk_version": "t",
        "session_id": sid,
        "process_uuid": "p",
    }
    assert raw.ok("telemetry", telemetry) == {"status": "accepted"}
    info = raw.ok("get_info", {"model_id": model_id, "type": "get_info"})
    assert info["model_data"]["model_name"] == BASE_MODEL
    save = raw.ok(
        "save_weights_for_sampler",
        {"model_id": model_id, "seq_id": 1, "sampling_session_seq_id": 0},
    )
    ssid = raw.result(save["request_id"]).json()["sampling_session_id"]
    assert ssid == f"{sid}:sample:0"
    sampler = raw.http.get(f"samplers/{ssid}").json()
    assert sampler["base_model"] == BASE_MODEL
    sample = raw.ok(
        "asample",
        {
            "sampling_session_id": ssid,
            "seq_id": 0,
            "num_samples": 2,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": [84, 104, 101]}]},
            "sampling_params": {"max_tokens": 3, "temperature": 0.0},
        },
    )
    assert len(sample["sample_sequence_ids"]) == 2
    assert raw.result(sample["request_id"]).headers["content-type"] == "application/x-protobuf"
    assert raw.ok(f"sessions/{sid}/finish", {"reason": {"type": "success"}}) == {}
    gone = raw.post("session_heartbeat", {"session_id": sid})
    assert gone.status_code == 410  # the SDK stops its heartbeat on 410
    closed = raw.post("optim_step", {"model_id": model_id, "seq_id": 2, "adam_params": {}})
    assert closed.status_code == 410


def test_stats_endpoint_lists_applied_steps(raw: Raw) -> None:
    snap = raw.http.get(f"{raw.srv.url}/crucible/v1/stats").json()
    assert {"applied_steps", "stats", "checkpoints"} <= set(snap)
    assert json.dumps(snap)


def test_silent_sessions_are_finished(raw: Raw) -> None:
    sid, model_id = raw.model()
    engine = raw.srv.engine
    assert engine.reap() == []  # just active
    far = time.monotonic() + raw.srv.config.session_ttl_s + 1
    assert sid in engine.reap(now=far)
    closed = raw.post("optim_step", {"model_id": model_id, "seq_id": 1, "adam_params": {}})
    assert closed.status_code == 410
    assert raw.post("session_heartbeat", {"session_id": sid}).status_code == 410


def test_legacy_load_weights_restores_a_model_in_place(raw: Raw, tokenizer: Any) -> None:
    _, model_id = raw.model()
    data = byte_datums(tokenizer)[:1]

    def loss(rid: str) -> float:
        return deserialize_forward_backward_output(raw.result(rid).content).metrics["loss:sum"]

    before = loss(raw.fwdbwd(model_id, 1, data, forward_only=True).json()["request_id"])
    saved = raw.ok("save_weights", {"model_id": model_id, "seq_id": 2, "path": "start"})
    path = raw.result(saved["request_id"]).json()["path"]
    assert path == f"tinker://{model_id}/weights/start"
    raw.fwdbwd(model_id, 3, data)
    step = raw.ok(
        "optim_step", {"model_id": model_id, "seq_id": 4, "adam_params": {"learning_rate": 0.1}}
    )
    raw.result(step["request_id"])
    moved = loss(raw.fwdbwd(model_id, 5, data, forward_only=True).json()["request_id"])
    assert moved != pytest.approx(before, rel=1e-6)
    load = raw.ok(
        "load_weights", {"model_id": model_id, "seq_id": 6, "path": path, "optimizer": True}
    )
    assert raw.result(load["request_id"]).json()["path"] == path
    after = loss(raw.fwdbwd(model_id, 7, data, forward_only=True).json()["request_id"])
    assert after == pytest.approx(before, rel=1e-5)
    missing = raw.post(
        "load_weights",
        {"model_id": model_id, "seq_id": 8, "path": f"tinker://{model_id}/weights/nope"},
    )
    assert missing.status_code == 404


def test_checkpoint_index_survives_a_restart(local_home: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with TinkerServer("local", backend_options={"home": str(local_home)}, state_dir=state) as a:
        r = Raw(a)
        try:
            _, model_id = r.model()
            fut = r.ok(
                "save_weights_for_sampler", {"model_id": model_id, "seq_id": 1, "path": "keep"}
            )
            path = r.result(fut["request_id"]).json()["path"]
        finally:
            r.close()
    assert (state / "checkpoints.json").exists()
    with TinkerServer("local", backend_options={"home": str(local_home)}, state_dir=state) as b:
        r = Raw(b)
        try:
            sid = r.ok("create_session", {})["session_id"]
            made = r.ok(
                "create_sampling_session",
                {"session_id": sid, "sampling_session_seq_id": 0, "model_path": path},
            )
            sampler = r.http.get(f"samplers/{made['sampling_session_id']}").json()
            assert sampler["model_path"] == path
            assert sampler["base_model"] == BASE_MODEL
        finally:
            r.close()

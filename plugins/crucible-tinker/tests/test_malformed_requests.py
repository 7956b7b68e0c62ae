"""Malformed and oversized requests to the real server over 127.0.0.1: every one gets a 4xx
with a JSON ``detail``, never a 500 with a traceback; sizes are bounded by the served
backend's capabilities."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from crucible_tinker.server import TinkerServer
from crucible_tinker.server.app import ROUTES, RouteSpec
from crucible_tinker.server.wire import (
    CreateModelRequest,
    SampleRequest,
    WireRequest,
    decode_request,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import crucible_core
from crucible_core.errors import ConfigError

from .conftest import BASE_MODEL

pytestmark = pytest.mark.timeout(180)

#: The rank the served backend declares as its largest.
DECLARED_RANK = 8
DEPTH = 100_000
LIMIT = 64 * 1024


class _RankCapped:
    """crucible-local, declaring ``max_lora_rank`` in its capabilities (every other call
    goes to the real backend)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def capabilities(self) -> Any:
        return msgspec.structs.replace(self._inner.capabilities(), max_lora_rank=DECLARED_RANK)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture(scope="module")
def srv(local_home: Path) -> Iterator[TinkerServer]:
    backend = _RankCapped(crucible_core.get_backend("local", home=str(local_home)))
    server = TinkerServer(backend, long_poll_s=0.3, max_body_bytes=LIMIT)
    server.start(timeout=60)
    yield server
    server.stop()
    backend.close()


@pytest.fixture
def http(srv: TinkerServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, headers={"X-API-Key": srv.api_key}, timeout=30) as c:
        yield c


def _url(spec: RouteSpec) -> str:
    return spec.path.replace("{session_id}", "sess-x").replace("{sampler_id:path}", "s:sample:0")


def _assert_json_4xx(response: httpx.Response) -> str:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert detail
    return detail


NESTED = b'{"session_id": ' + b"[" * DEPTH + b"]" * DEPTH + b"}"
MALFORMED = {
    "nested": NESTED,
    "nested-object": b'{"x": ' + b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH + b"}",
    "top-level-array": b"[" * DEPTH + b"]" * DEPTH,
    "not-json": b"\xff\xfe{not json",
}


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
@pytest.mark.parametrize("spec", ROUTES, ids=[f"{s.method} {s.path}" for s in ROUTES])
def test_malformed_bodies_get_a_4xx_json_answer(
    http: httpx.Client, spec: RouteSpec, body: bytes
) -> None:
    response = http.request(
        spec.method, _url(spec), content=body, headers={"Content-Type": "application/json"}
    )
    _assert_json_4xx(response)
    assert "Traceback" not in response.text


def test_the_route_table_is_what_the_server_serves(srv: TinkerServer) -> None:
    app: Any = srv._server.config.app.app  # under the fault-injection middleware
    served = {(method, route.path) for route in app.routes for method in route.methods}
    assert served - {("HEAD", s.path) for s in ROUTES} == {(s.method, s.path) for s in ROUTES}


def _session(http: httpx.Client) -> str:
    return http.post("/api/v1/create_session", json={}).json()["session_id"]


def test_a_long_base_model_is_a_4xx_naming_the_field(http: httpx.Client) -> None:
    sid = _session(http)
    long_name = "x" * 5000
    for path, body in [
        ("create_model", {"session_id": sid, "model_seq_id": 0, "base_model": long_name}),
        (
            "create_sampling_session",
            {"session_id": sid, "sampling_session_seq_id": 0, "base_model": long_name},
        ),
    ]:
        detail = _assert_json_4xx(http.post(f"/api/v1/{path}", json=body))
        assert detail.startswith("$.base_model:")
    # Short enough to decode, too long for a file name, and no model: refused up front.
    for name in ("y" * 1000, "no-such-model"):
        response = http.post(
            "/api/v1/create_sampling_session",
            json={"session_id": sid, "sampling_session_seq_id": 1, "base_model": name},
        )
        assert "not served here" in _assert_json_4xx(response)
        assert BASE_MODEL in response.json()["detail"]


def test_lora_rank_is_bounded_by_the_backend_capabilities(http: httpx.Client) -> None:
    """crucible-local declares no ``max_lora_rank``, so the served backend is wrapped to
    declare one (``_RankCapped``: the only part that is not real; every call still goes to
    crucible-local)."""
    sid = _session(http)

    def create(seq: int, rank: int) -> httpx.Response:
        body = {
            "session_id": sid,
            "model_seq_id": seq,
            "base_model": BASE_MODEL,
            "lora_config": {"rank": rank},
        }
        return http.post("/api/v1/create_model", json=body)

    detail = _assert_json_4xx(create(0, DECLARED_RANK + 1))
    assert f"above {DECLARED_RANK}" in detail
    assert "$.lora_config.rank" in _assert_json_4xx(create(0, 0))
    assert create(0, DECLARED_RANK).status_code == 200


def test_sampling_sizes_are_bounded_by_the_context_length(
    http: httpx.Client, srv: TinkerServer
) -> None:
    context = srv.engine.context_length
    assert context is not None
    sid = _session(http)
    made = http.post(
        "/api/v1/create_sampling_session",
        json={"session_id": sid, "sampling_session_seq_id": 0, "base_model": BASE_MODEL},
    )
    ssid = made.json()["sampling_session_id"]

    def sample(tokens: list[int], **params: Any) -> httpx.Response:
        body = {
            "sampling_session_id": ssid,
            "seq_id": len(tokens),
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": tokens}]},
            "sampling_params": params,
        }
        return http.post("/api/v1/asample", json=body)

    assert "context length" in _assert_json_4xx(sample([1] * (context + 1)))
    assert "max_tokens" in _assert_json_4xx(sample([1, 2], max_tokens=context + 1))
    assert "$.num_samples" in _assert_json_4xx(
        http.post(
            "/api/v1/asample",
            json={"sampling_session_id": ssid, "num_samples": 10_000, "prompt": {"chunks": []}},
        )
    )
    assert sample([1, 2], max_tokens=2).status_code == 200


def _raw_request(srv: TinkerServer, head: str, body: bytes = b"") -> tuple[int, dict[str, str]]:
    """Send ``head`` (and ``body``) on a socket of its own; the status and headers."""
    with socket.create_connection((srv.host, srv.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    lines = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}


def test_a_declared_oversized_body_is_refused_before_it_is_read(srv: TinkerServer) -> None:
    # 200 MB announced and none sent: the answer comes from the Content-Length alone.
    head = (
        "POST /api/v1/forward_backward HTTP/1.1\r\n"
        f"Host: {srv.host}\r\nX-API-Key: {srv.api_key}\r\n"
        "Content-Type: application/x-protobuf\r\nContent-Length: 200000000\r\n\r\n"
    )
    status, headers = _raw_request(srv, head)
    assert status == 413
    assert headers["connection"] == "close"


def test_a_chunked_body_is_counted_while_it_is_read(http: httpx.Client) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        # Just past the limit: the server stops reading there and closes the connection,
        # so a client still sending would lose the answer (test_cli sends 200 MB).
        nonlocal sent
        while sent <= LIMIT:
            sent += 4096
            yield b"{" * 4096

    response = http.post("/api/v1/create_session", content=chunks())
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["detail"]


def test_a_zstd_bomb_is_refused_once_it_passes_the_limit(http: httpx.Client) -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\0" * (LIMIT * 64))
    assert len(bomb) < LIMIT
    response = http.post(
        "/api/v1/forward_backward",
        content=bomb,
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd"},
    )
    assert response.status_code == 413
    assert "decompresses" in response.json()["detail"]


def test_body_limit_defaults_to_the_largest_forward_backward_chunk() -> None:
    from crucible_tinker.server.config import ServerConfig

    config = ServerConfig(api_keys=("tml-k",))
    limit = config.body_limit(512)
    # Datums worth fwdbwd_max_chunk_bytes fit, with their framing.
    assert config.fwdbwd_max_chunk_bytes < limit < 2 * config.fwdbwd_max_chunk_bytes
    # One datum as long as a large context is sent alone, whatever the byte budget.
    assert config.body_limit(1_000_000) > 1_000_000 * 4 * 5
    assert ServerConfig(api_keys=("tml-k",), max_body_bytes=4096).body_limit(512) == 4096


# -- the decoder, as a property ---------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
_bodies = st.one_of(
    st.binary(max_size=200),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "session_id": _json_values,
            "model_seq_id": _json_values,
            "base_model": _json_values,
            "lora_config": _json_values,
            "sampling_session_id": _json_values,
            "prompt": _json_values,
            "num_samples": _json_values,
        },
    ).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
)


@settings(max_examples=300, deadline=None)
@given(body=_bodies, type_=st.sampled_from([CreateModelRequest, SampleRequest]))
def test_decode_request_returns_a_struct_or_raises_a_config_error(
    body: bytes, type_: type[WireRequest]
) -> None:
    error: ConfigError | None = None
    try:
        out: object = decode_request(body, type_)
    except ConfigError as exc:  # ValidationError: the only way a bad body may fail
        error = exc
        out = None
    if error is None:
        assert isinstance(out, type_)
    else:  # one line saying where: a field path, or that the JSON itself is malformed
        assert str(error).startswith(("$", "malformed JSON"))
        assert "\n" not in str(error)

"""Property tests: every IR type round-trips through every format; junk gives crucible errors."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crucible_core.errors import CrucibleError
from crucible_core.ir import codec
from crucible_core.ir.backend import Datum, Message, Prompt, SamplingParams
from crucible_core.ir.training import CheckpointPolicy, LearningConfig
from crucible_core.ir.work import RetryPolicy
from tests.strategies import ir_values

ALL_TYPES: list[type[Any]] = [
    *codec.IR_TYPES.values(),
    Datum,
    Prompt,
    Message,
    SamplingParams,
    LearningConfig,
    CheckpointPolicy,
    RetryPolicy,
]
_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("type_", ALL_TYPES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_roundtrip_binary_and_json(type_: type[Any], fmt: codec.Format) -> None:
    @_settings
    @given(ir_values(type_))
    def check(value: Any) -> None:
        assert codec.decode(codec.encode(value, format=fmt), type_, format=fmt) == value

    check()


@pytest.mark.parametrize("type_", ALL_TYPES, ids=lambda t: t.__name__)
def test_roundtrip_toml(type_: type[Any]) -> None:
    @_settings
    @given(ir_values(type_, toml_safe=True))
    def check(value: Any) -> None:
        assert codec.decode(codec.encode(value, format="toml"), type_, format="toml") == value

    check()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@pytest.mark.parametrize("type_", list(codec.IR_TYPES.values()), ids=lambda t: t.__name__)
def test_arbitrary_json_raises_only_crucible_errors(type_: type[Any]) -> None:
    @settings(max_examples=150, deadline=None)
    @given(_json)
    def check(doc: Any) -> None:
        data = msgspec.json.encode(doc)
        with contextlib.suppress(CrucibleError):
            codec.decode(data, type_)

    check()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_crucible_errors(data: bytes) -> None:
    for fmt in ("json", "msgpack", "toml"):
        with contextlib.suppress(CrucibleError):
            codec.decode(data, codec.IR_TYPES["TrainingJob"], format=fmt)  # type: ignore[arg-type]

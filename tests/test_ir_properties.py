"""Property tests: every IR type round-trips through every format; junk gives crucible errors."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crucible_core.errors import CrucibleError, ValidationError
from crucible_core.ir import codec
from crucible_core.ir.backend import Datum, Message, Prompt, SamplingParams
from crucible_core.ir.training import CheckpointPolicy, LearningConfig, TrainingJob
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


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*path, k))]  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))]  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    return [path]


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        return {k: _replace(v, rest, value) if k == head else v for k, v in node.items()}  # pyright: ignore[reportUnknownVariableType]
    return [_replace(v, rest, value) if i == head else v for i, v in enumerate(node)]  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]


def _non_finite(node: Any) -> bool:
    if isinstance(node, float):
        return not math.isfinite(node)
    if isinstance(node, dict):
        return any(_non_finite(v) for v in node.values())  # pyright: ignore[reportUnknownVariableType]
    if isinstance(node, list | tuple):
        return any(_non_finite(v) for v in node)  # pyright: ignore[reportUnknownVariableType]
    return False


@pytest.mark.parametrize("type_", ALL_TYPES, ids=lambda t: t.__name__)
def test_no_non_finite_float_survives_decode(type_: type[Any]) -> None:
    """inf/nan put anywhere in a valid document (msgpack, TOML-like data) is refused."""

    @_settings
    @given(ir_values(type_), st.sampled_from([math.inf, -math.inf, math.nan]), st.data())
    def check(value: Any, bad: float, data: st.DataObject) -> None:
        raw = msgspec.msgpack.decode(codec.encode(value, format="msgpack"))
        leaves = [p for p in _leaves(raw) if p]
        if not leaves:
            return
        path = data.draw(st.sampled_from(leaves))
        doc = _replace(raw, path, bad)
        for decode in (
            lambda: codec.decode(msgspec.msgpack.encode(doc), type_, format="msgpack"),
            lambda: codec.convert(doc, type_),
        ):
            try:
                out = decode()
            except ValidationError as exc:
                refused: ValidationError | None = exc
            else:
                refused = None
                assert not _non_finite(msgspec.to_builtins(out)), (path, out)
            assert refused is None or refused.path is not None

    check()


def test_non_finite_in_free_form_params_is_refused_with_its_path() -> None:
    doc = b'model_spec = {name = "m", options = {a = [1, {b = -inf}]}}\ndataset_spec = {uri = "d"}'
    with pytest.raises(ValidationError, match=r"^\$\.model_spec\.options\.a\[1\]\.b: .*finite"):
        codec.decode(doc, TrainingJob, format="toml")
    lr = b"""model_spec = {name = "m"}
dataset_spec = {uri = "d"}
learning_config = {optimizer = {name = "adamw", lr = inf}}"""
    with pytest.raises(ValidationError) as info:
        codec.decode(lr, TrainingJob, format="toml")
    assert info.value.message == (
        "$.learning_config.optimizer.lr: expected a finite number, got inf"
    )
    assert info.value.path == "$.learning_config.optimizer.lr"

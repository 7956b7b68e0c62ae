"""The conformance kit passes a conforming backend and names the rule a broken one breaks."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crucible_core.ir import Completion, DatasetSpec, Health, ModelSpec, StreamChunk, TrainingJob
from crucible_core.testing import (
    ConformanceError,
    check_inference_backend,
    check_light_import,
    check_training_backend,
)
from tests.toy_backend import (
    ForgetfulSession,
    NoLearningSession,
    SyncSession,
    ToyBackend,
    backend_with,
)

JOB = TrainingJob(model_spec=ModelSpec(name="toy"), dataset_spec=DatasetSpec(uri="x"))


def test_conforming_training_backend_passes() -> None:
    check_training_backend(ToyBackend(), JOB)


@pytest.mark.parametrize(
    ("session", "message"),
    [
        (NoLearningSession, "loss did not fall"),
        (ForgetfulSession, "load_state did not restore"),
        (SyncSession, "forward must return a Future"),
    ],
)
def test_broken_training_backends_fail_with_the_rule(session: Any, message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_training_backend(backend_with(session), JOB)


def test_not_a_backend_at_all() -> None:
    with pytest.raises(ConformanceError, match="needs capabilities, get_tokenizer"):
        check_training_backend(object(), JOB)
    with pytest.raises(ConformanceError, match="an inference backend needs"):
        check_inference_backend(object())


def test_conforming_inference_backend_passes() -> None:
    check_inference_backend(ToyBackend())


class _Wrong(ToyBackend):
    mode = ""

    def complete(self, prompt: Any, params: Any) -> Completion:
        c = super().complete(prompt, params)
        if self.mode == "too_long":
            return c.__replace__(tokens=[*c.tokens, 1])  # type: ignore[attr-defined]
        if self.mode == "backend_id":
            return c.__replace__(backend_id="other")  # type: ignore[attr-defined]
        return c

    def stream(self, prompt: Any, params: Any) -> Iterator[StreamChunk]:
        chunks = list(super().stream(prompt, params))
        if self.mode == "no_finish":
            chunks[-1] = chunks[-1].__replace__(finish_reason=None)  # type: ignore[attr-defined]
        yield from chunks

    def health_check(self) -> Health:
        return Health(ok=self.mode != "unhealthy")


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("too_long", "max_tokens was 8"),
        ("backend_id", "must equal Capabilities.backend_id"),
        ("no_finish", "last StreamChunk must carry finish_reason"),
        ("unhealthy", "health_check must be ok"),
    ],
)
def test_broken_inference_backends_fail_with_the_rule(mode: str, message: str) -> None:
    backend = _Wrong()
    backend.mode = mode
    with pytest.raises(ConformanceError, match=message):
        check_inference_backend(backend)


def test_light_import_detects_heavy_modules(tmp_path: Path) -> None:
    (tmp_path / "heavy_probe_mod.py").write_text("import json\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ConformanceError, match="pulled in heavy modules: json"):
            check_light_import("heavy_probe_mod", heavy=("json",))
        check_light_import("heavy_probe_mod", heavy=("sqlite3",))
        with pytest.raises(ConformanceError, match="importing no_such_mod_q failed"):
            check_light_import("no_such_mod_q")
    finally:
        sys.path.remove(str(tmp_path))


def test_isolated_host_sees_only_the_named_plugins() -> None:
    import crucible_core
    from crucible_core.testing import isolated_host
    from tests.toy_backend import toy_plugin

    with isolated_host(toy_plugin()) as host:
        assert set(host.registrations("backend")) == {"toy"}
        assert crucible_core.get_backend("toy").capabilities().backend_id == "toy"
        assert [p.name for p in host.plugins()] == ["core", "plugin0"]
    from crucible_core.plugins import get_host

    assert get_host() is not host

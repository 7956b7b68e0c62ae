"""check_stage passes a well-behaved stage and names the rule each broken one breaks."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from crucible_core.contracts import StageContext
from crucible_core.errors import Cancelled
from crucible_core.testing import ConformanceError, KitStageContext, check_stage


class CountWords:
    """A good stage: reads its input, writes an artifact, polls cancellation."""

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        rows = ctx.inputs["load"]["rows"]
        counts: list[int] = []
        for row in rows:
            if ctx.cancel.is_set():
                raise Cancelled("count_words: cancelled")
            counts.append(len(row.split()))
        out = ctx.run_dir / "counts.txt"
        out.write_text("\n".join(map(str, counts)))
        art = ctx.artifacts.put(out, type="metrics", name="counts")
        ctx.emit("words.counted", total=sum(counts))
        return {"total": sum(counts), "artifact_id": art.artifact_id}


def _ctx(tmp_path: Path) -> KitStageContext:
    return KitStageContext(tmp_path, inputs={"load": {"rows": ["a b", "c d e"]}})


def test_a_good_stage_passes(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    out = check_stage(CountWords(), ctx)
    assert out["total"] == 5
    assert ctx.events[0] == ("words.counted", {"total": 5})
    assert ctx.artifacts.exists(str(out["artifact_id"]).removeprefix("sha256:"))


class _Raises(CountWords):
    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        raise KeyError("rows")


class _ReturnsList(CountWords):
    def run(self, ctx: StageContext) -> Any:
        return [1, 2]


class _IntKeys(CountWords):
    def run(self, ctx: StageContext) -> Any:
        return {1: "one"}


class _MutatesInputs(CountWords):
    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        ctx.inputs["load"]["rows"].append("x")
        return {}


class _NotRerunnable(CountWords):
    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        with open(ctx.run_dir / "once.lock", "x"):
            pass
        return {}


class _KeysChange(CountWords):
    calls = 0

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        self.calls += 1
        return {f"k{self.calls}": 1}


class _IgnoresCancel(CountWords):
    release = threading.Event()

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        if ctx.cancel.is_set():
            self.release.wait(5.0)  # "long work" that never polls the token
        return {}


class _WrongCancelError(CountWords):
    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        if ctx.cancel.is_set():
            raise RuntimeError("stopped")
        return {}


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (_Raises(), r"run\(ctx\) raised KeyError: 'rows' \(checking: a stage runs"),
        (_ReturnsList(), "must return None or a mapping of outputs, got list"),
        (_IntKeys(), "output keys must be strings"),
        (_MutatesInputs(), "run\\(ctx\\) modified ctx.inputs"),
        (_NotRerunnable(), "second time raised FileExistsError.*re-runnable"),
        (_KeysChange(), r"second run returned keys \['k2'\], the first \['k1'\]"),
        (_WrongCancelError(), "with ctx.cancel set raised RuntimeError: stopped"),
        (object(), "a stage needs run\\(ctx\\)"),
    ],
)
def test_broken_stages_fail_with_the_rule(tmp_path: Path, stage: Any, message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_stage(stage, _ctx(tmp_path))


def test_a_stage_that_ignores_cancellation_fails_within_the_timeout(tmp_path: Path) -> None:
    try:
        with pytest.raises(ConformanceError, match=r"with ctx\.cancel set did not return within"):
            check_stage(_IgnoresCancel(), _ctx(tmp_path), timeout=0.5)
    finally:
        _IgnoresCancel.release.set()


def test_kit_context_resolves_backends_by_name(tmp_path: Path) -> None:
    default, other = object(), object()
    ctx = KitStageContext(tmp_path, backends={None: default, "other": other}, options={"a": 1})
    assert ctx.backend() is default
    assert ctx.backend("other") is other
    assert ctx.options == {"a": 1}
    assert ctx.run_dir == tmp_path / "runs" / "conformance"
    from crucible_core.errors import NotFound

    with pytest.raises(NotFound, match="no backend 'missing'"):
        ctx.backend("missing")

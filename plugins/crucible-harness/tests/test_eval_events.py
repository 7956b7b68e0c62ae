"""``crucible eval`` frames each evaluation with run events, so the interop sinks see it.

The OpenLineage, MLflow and OpenTelemetry sinks observe ``on_event``; an
evaluation that emitted nothing would be missing from a lineage catalogue.
Real parts: the installed plugins, crucible-local's built-in base model, the
shipped GSM8K sample; a plugin object added to the host records the events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from crucible_harness.evaluate import evaluate, resolve_target

from crucible_core import hookimpl
from crucible_core.errors import CrucibleError
from crucible_core.plugins import PluginHost


class _Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    @hookimpl
    def on_event(self, event: Any) -> None:
        self.events.append(event)


@pytest.fixture
def recording_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[PluginHost, _Recorder]:
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "home"))
    host = PluginHost()
    host.load_entrypoints()
    recorder = _Recorder()
    host.add_plugin(recorder, name="recorder")
    return host, recorder


def _framing(recorder: _Recorder, eval_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.kind, dict(e.data))
        for e in recorder.events
        if e.job_id == eval_id and e.kind in ("run.start", "run.end")
    ]


def test_an_evaluation_is_framed_by_run_start_and_run_end(
    recording_host: tuple[PluginHost, _Recorder],
) -> None:
    host, recorder = recording_host
    target = resolve_target("tiny-llama", backend="local")
    result = evaluate(target, "sample:gsm8k", ["exact_match"], n=2, host=host)
    (start_kind, start), (end_kind, end) = _framing(recorder, result.eval_id)
    assert (start_kind, end_kind) == ("run.start", "run.end")
    assert start["job_kind"] == "evaluation"
    assert start["dataset"] == {"uri": "sample:gsm8k", "hash": result.dataset_hash}
    assert end["status"] == "succeeded"
    [written] = end["artifacts"]
    assert written["uri"].endswith(f"{result.eval_id}.json")
    assert Path(written["uri"].removeprefix("file://")).is_file()


def test_a_failing_evaluation_ends_failed_and_an_unsaved_one_emits_nothing(
    recording_host: tuple[PluginHost, _Recorder],
) -> None:
    host, recorder = recording_host
    target = resolve_target("no-such-model", backend="local")
    with pytest.raises(CrucibleError, match="no-such-model"):
        evaluate(target, "sample:gsm8k", ["exact_match"], n=2, host=host)
    ends = [e for e in recorder.events if e.kind == "run.end"]
    assert [e.data["status"] for e in ends] == ["failed"]
    assert ends[0].data["error"]
    before = len(recorder.events)
    evaluate(
        resolve_target("tiny-llama", backend="local"),
        "sample:gsm8k",
        ["exact_match"],
        n=1,
        host=host,
        write=False,
    )
    assert not [e for e in recorder.events[before:] if e.kind.startswith("run.")]

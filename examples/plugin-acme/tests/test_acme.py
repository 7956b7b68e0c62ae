import json
from pathlib import Path

import pytest
from crucible_acme import plugin
from crucible_acme.cli import CountCommand
from crucible_acme.executor import InlineExecutor
from crucible_acme.source import LinesSource
from crucible_acme.stages import DedupeStage

from crucible_core import get_backend, get_dataset, get_executor, get_stage
from crucible_core.cli.main import main
from crucible_core.ir import DatasetSpec
from crucible_core.testing import (
    KitStageContext,
    check_command,
    check_dataset_source,
    check_executor,
    check_light_import,
    check_stage,
    isolated_host,
)


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("alpha\n\nbeta\nalpha\n")
    return path


def test_the_stage_conforms_and_dedupes(tmp_path: Path) -> None:
    rows = [{"text": "a"}, {"text": "b"}, {"text": "a"}]
    ctx = KitStageContext(tmp_path, inputs={"load": {"rows": rows}})
    out = check_stage(DedupeStage(), ctx)
    assert out["rows"] == [{"text": "a"}, {"text": "b"}]
    assert out["dropped"] == 1
    assert ctx.events[-1][0] == "acme.deduped"


def test_the_source_conforms(text_file: Path, tmp_path: Path) -> None:
    rows = check_dataset_source(
        LinesSource(),
        DatasetSpec(uri=f"lines:{text_file}"),
        min_rows=3,
        missing=DatasetSpec(uri=f"lines:{tmp_path / 'absent.txt'}"),
    )
    assert [r["text"] for r in rows] == ["alpha", "beta", "alpha"]


def test_the_executor_conforms() -> None:
    check_executor(InlineExecutor())


def test_the_command_conforms(text_file: Path) -> None:
    run = check_command(CountCommand(), [str(text_file), "--json"])
    assert json.loads(run.stdout) == {"file": str(text_file), "rows": 3}
    check_command(CountCommand(), ["--bogus"], exit_code=2)


def test_registrations_are_reachable_by_name(
    text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with isolated_host(plugin):
        assert isinstance(get_stage("acme.dedupe"), DedupeStage)
        assert isinstance(get_dataset("acme-lines"), LinesSource)
        assert isinstance(get_executor("acme-inline"), InlineExecutor)
        assert main(["acme-count", str(text_file)]) == 0
        assert capsys.readouterr().out == f"{text_file}: 3 rows\n"
        with pytest.raises(KeyError):
            get_backend("acme")  # it registers no backend


def test_the_event_sink_logs_training_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crucible_core.records.events import EventBus

    log = tmp_path / "steps.jsonl"
    monkeypatch.setenv("ACME_EVENT_LOG", str(log))
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "home"))
    with isolated_host(plugin) as host, EventBus(host=host) as bus:
        bus.emit("train.step", job_id="run-1", step=1, loss=2.5)
        bus.emit("eval.metric", job_id="run-1", step=1, loss=2.0)
        bus.drain()
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        {"job": "run-1", "step": 1, "loss": 2.5}
    ]


def test_the_hooks_module_is_cheap_to_import() -> None:
    check_light_import("crucible_acme.plugin")

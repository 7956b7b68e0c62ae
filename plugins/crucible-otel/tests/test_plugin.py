"""The plugin's hook, its import cost and the configuration from the environment."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import crucible_otel.plugin
import pytest
from crucible_otel import sink as sink_module
from crucible_otel.config import exporter_choice, sink_from_env

from crucible_core.plugins import PluginHost
from crucible_core.records.events import Event
from crucible_core.testing import check_light_import

ROOT = Path(__file__).resolve().parents[3]


def test_importing_the_plugin_pulls_in_nothing_heavy() -> None:
    check_light_import("crucible_otel.plugin", heavy=["opentelemetry", "torch", "numpy"])


def test_the_entry_point_registers_on_event() -> None:
    h = PluginHost(autoload=True, strict=True)
    assert "otel" in {i.name for i in h.plugins()}
    impls = {i.plugin_name for i in h.pm.hook.on_event.get_hookimpls()}
    assert "otel" in impls


def test_on_event_reaches_the_installed_sink(otel: Any) -> None:
    event = Event(kind="stage.start", job_id="p", ts=1.0, data={"stage": "x"})
    crucible_otel.plugin.on_event(event)
    assert otel.sink.flush(10)
    assert otel.sink.translator.open_runs == ["p"]


@pytest.mark.parametrize(
    ("env", "choice"),
    [
        ({}, "none"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, "otlp"),
        ({"CRUCIBLE_OTEL_EXPORTER": "Console"}, "console"),
        ({"CRUCIBLE_OTEL_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, "none"),
        ({"CRUCIBLE_OTEL_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, "none"),
        ({"CRUCIBLE_OTEL_EXPORTER": "jaeger"}, None),
    ],
)
def test_exporter_choice(env: dict[str, str], choice: str | None, monkeypatch: Any) -> None:
    for name in ("CRUCIBLE_OTEL_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert exporter_choice() == choice


@pytest.mark.parametrize(
    ("name", "value"),
    [("CRUCIBLE_OTEL_EXPORTER", "jaeger"), ("CRUCIBLE_OTEL_QUEUE_SIZE", "zero")],
)
def test_a_value_not_understood_is_logged_and_export_stays_off(
    name: str, value: str, monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CRUCIBLE_OTEL_EXPORTER", "console")
    monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="crucible_otel"):
        assert sink_from_env() is None
    assert name in caplog.text
    assert value in caplog.text


def test_nothing_is_built_when_export_is_off(monkeypatch: Any) -> None:
    monkeypatch.delenv("CRUCIBLE_OTEL_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    previous = sink_module.install(None)
    sink_module.reset()  # forgotten: the next event reads the environment
    try:
        sink_module.deliver(Event(kind="x", job_id="j", ts=1.0))
        assert sink_module.current_sink() is None
    finally:
        sink_module.install(previous)


def test_the_console_exporter_writes_the_trace_when_a_crucible_train_process_exits(
    tmp_path: Path,
) -> None:
    """A real ``crucible train`` process: the trace reaches stderr at exit, stdout is untouched."""
    code = (
        "import sys\n"
        "from crucible_core.cli.main import main\n"
        "from crucible_core.plugins import PluginHost, reset_host\n"
        "from tests.toy_backend import toy_plugin\n"
        "import crucible_otel.plugin\n"
        "h = PluginHost(autoload=False)\n"
        "h.add_plugin(toy_plugin(), name='toy')\n"
        "h.add_plugin(crucible_otel.plugin, name='otel')\n"
        "reset_host(h)\n"
        "sys.exit(main(['train', sys.argv[1], '--job-id', 'console', '--no-progress', '--json']))\n"
    )
    from crucible_core.ir import encode

    sys.path.insert(0, str(ROOT))
    try:
        from tests.test_training_workflow import make_job
    finally:
        sys.path.remove(str(ROOT))
    job = tmp_path / "job.json"
    job.write_bytes(encode(make_job()))
    env = {
        **dict(__import__("os").environ),
        "CRUCIBLE_HOME": str(tmp_path / "home"),
        "CRUCIBLE_OTEL_EXPORTER": "console",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", code, str(job)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert '"name": "crucible.run"' in out.stderr
    assert '"name": "stage train"' in out.stderr
    assert "crucible.train.loss" in out.stderr
    assert "crucible.run" not in out.stdout

"""The MLflow writer process: the tracking work runs outside the run's process.

Real parts: a real child process (``python -m crucible_mlflow.writer``), a real
SQLite tracking store read back through mlflow's client, a real ``crucible train``
in a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crucible_mlflow.config import MlflowConfig
from crucible_mlflow.sink import MlflowSink
from crucible_mlflow.writer import FrameReader, frame
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.records.events import Event
from crucible_core.testing.http import LocalEndpoint


@given(
    st.lists(st.tuples(st.sampled_from([b"e", b"f", b"c", b"a"]), st.integers(0, 2**40))),
    st.lists(st.integers(1, 64), min_size=1),
)
def test_frames_survive_any_split_of_the_stream(
    messages: list[tuple[bytes, int]], cuts: list[int]
) -> None:
    import msgspec

    stream = b"".join(frame(tag, [n, "x" * (n % 7)]) for tag, n in messages)
    reader = FrameReader()
    got: list[tuple[bytes, bytes]] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += reader.feed(stream[pos : pos + step])
        pos, i = pos + step, i + 1
    assert [(tag, msgspec.msgpack.decode(body)[0]) for tag, body in got] == messages
    assert reader.feed(b"") == []


def _events(job_id: str, steps: int) -> list[Event]:
    ts = time.time()
    out = [Event(kind="run.start", job_id=job_id, ts=ts, data={"job_kind": "training_run"})]
    for s in range(1, steps + 1):
        out.append(
            Event(
                kind="train.step",
                job_id=job_id,
                ts=ts + s / 100,
                step=s,
                data={"loss": 1.0 / s, "metrics": {"lr": 1e-3, "tokens": s * 10}},
            )
        )
        out.append(Event(kind="probe.other", job_id=job_id, ts=ts + s / 100, data={}))
    out.append(Event(kind="run.end", job_id=job_id, ts=ts + 1, data={"status": "succeeded"}))
    return out


def test_the_tracking_calls_run_in_a_child_process(crucible_home: Path) -> None:
    from mlflow import MlflowClient

    sink = MlflowSink(MlflowConfig.from_env())
    for event in _events("child", 30):
        assert sink.offer(event)
    assert sink.flush(120)
    pid = sink.writer.pid
    assert pid is not None
    assert pid != os.getpid()
    import psutil

    # Background work: it yields the cores to the run when they are short.
    assert psutil.Process(pid).nice() >= min(psutil.Process().nice() + 10, 19)
    # Only the events the tracker reads went to the child (not probe.other).
    assert sink.writer.sent == 32
    assert (sink.writer.handled, sink.errors, sink.dropped) == (32, 0, 0)
    assert sink.close(60)
    assert sink.writer.pid == pid
    client = MlflowClient(tracking_uri=f"sqlite:///{crucible_home.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("crucible")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 30


def test_a_writer_that_dies_costs_the_run_nothing(crucible_home: Path) -> None:
    """The child is killed by the test mid-stream: later events count as errors, none block."""
    sink = MlflowSink(MlflowConfig.from_env())
    events = _events("dies", 40)
    for event in events[:10]:
        sink.offer(event)
    assert sink.flush(120)
    sink.writer.kill()
    began = time.monotonic()
    for event in events[10:]:
        sink.offer(event)
    assert time.monotonic() - began < 1.0
    assert not sink.flush(5)
    assert sink.queue.errors == len([e for e in events[10:] if e.kind != "probe.other"])
    assert sink.close(5) is False  # not everything was recorded


def test_a_training_process_never_imports_mlflow(crucible_home: Path, job_file: Path) -> None:
    """A whole `crucible train` (shortened README main job): mlflow and SQLAlchemy load in
    the writer process only, and the run still reaches the store."""
    code = (
        "import sys, json\n"
        "from crucible_core.cli.main import main\n"
        "code = main(['train', sys.argv[1], '--job-id', 'lean', '--no-progress'])\n"
        "from crucible_mlflow import sink\n"
        "s = sink.reset(60)\n"
        "print(json.dumps({'code': code, 'mlflow': 'mlflow' in sys.modules,"
        " 'sqlalchemy': 'sqlalchemy' in sys.modules, 'errors': s.errors if s else None}))\n"
    )
    env = {**os.environ, "CRUCIBLE_HOME": str(crucible_home)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(job_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "mlflow": False, "sqlalchemy": False, "errors": 0}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{crucible_home.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("crucible")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert (run.info.run_name, run.info.status) == ("lean", "FINISHED")
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6


def test_the_writers_warnings_reach_the_runs_log(
    crucible_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer's stderr is /dev/null; what it logs comes back to the run's logging.

    The failure is real: a tracking server on 127.0.0.1 that was closed (connection
    refused), reached by mlflow's REST client without retries."""
    with LocalEndpoint() as gone:
        url = gone.url
    monkeypatch.setenv("CRUCIBLE_MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    sink = MlflowSink(MlflowConfig.from_env())
    with caplog.at_level(logging.WARNING, logger="crucible_mlflow"):
        assert sink.offer(_events("refused", 1)[0])
        assert sink.flush(120)
        sink.close(10)
    assert sink.errors == 1
    [record] = [r for r in caplog.records if "(MLflow writer)" in r.getMessage()]
    assert record.name == "crucible_mlflow"
    assert "an event failed" in record.getMessage()

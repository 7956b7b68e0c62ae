"""``crucible jobs / artifacts / lineage`` in this process: output, --json, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crucible_core.cli.main import main
from crucible_core.ir.experiment import Experiment, StageDef
from crucible_core.ir.work import Job
from crucible_core.pipeline.runner import run_pipeline
from crucible_core.plugins import PluginHost
from crucible_core.records.paths import db_path, run_dir

from .test_pipeline import StagesPlugin

JOB_TOML = """
kind = "custom"
priority = "interactive"
payload = { target = "tests.runtime.jobs:echo", args = { x = 1 } }
"""

BATCH_TOML = """
[[jobs]]
id = "first"
kind = "custom"

[[jobs]]
id = "second"
kind = "custom"
constraints = { depends_on = ["first"] }
"""

CYCLE_TOML = """
[[jobs]]
id = "a"
constraints = { depends_on = ["b"] }

[[jobs]]
id = "b"
constraints = { depends_on = ["a"] }
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_submit_list_show_cancel_retry(
    crucible_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "jobs", "submit", write(tmp_path, "job.toml", JOB_TOML))
    assert (code, err) == (0, "")
    job_id = out.strip()
    assert job_id.startswith("job-")

    code, out, _ = run(capsys, "jobs", "list", "--json")
    (listed,) = json.loads(out)
    assert (listed["id"], listed["status"], listed["priority"]) == (job_id, "queued", "interactive")

    code, out, _ = run(capsys, "jobs", "list")
    assert job_id in out
    assert "interactive" in out

    code, out, _ = run(capsys, "jobs", "show", job_id, "--json")
    shown = json.loads(out)
    assert shown["job"]["payload"]["args"] == {"x": 1}
    assert [h["to_status"] for h in shown["history"]] == ["queued"]
    assert shown["run_dir"] == str(run_dir(job_id))

    assert run(capsys, "jobs", "cancel", job_id)[1] == f"{job_id}: cancelled\n"
    code, out, _ = run(capsys, "jobs", "list", "--status", "cancelled", "--json")
    assert [j["id"] for j in json.loads(out)] == [job_id]
    assert run(capsys, "jobs", "retry", job_id)[1] == f"{job_id}: queued\n"
    code, out, _ = run(capsys, "jobs", "show", job_id)
    assert "queued -> cancelled" in out
    assert "cancelled -> queued" in out


def test_submit_batch_with_dependencies(
    crucible_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "jobs", "submit", write(tmp_path, "b.toml", BATCH_TOML), "--json")
    assert code == 0
    assert [(j["id"], j["status"]) for j in json.loads(out)] == [
        ("first", "queued"),
        ("second", "pending"),
    ]


def test_cycle_is_exit_2_naming_it(
    crucible_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "jobs", "submit", write(tmp_path, "c.toml", CYCLE_TOML))
    assert code == 2
    assert out == ""
    assert "cycle: a -> b -> a" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("kind = [", "malformed TOML"),
        ('kind = "custum"', "$.kind: expected one of"),
        ("model_spec = 3\nbogus = 1", "cannot tell which IR type"),
    ],
)
def test_bad_job_files_exit_2(
    crucible_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    message: str,
) -> None:
    code, _, err = run(capsys, "jobs", "submit", write(tmp_path, "bad.toml", text))
    assert code == 2
    assert message in err
    assert str(tmp_path / "bad.toml") in err
    assert "Traceback" not in err


def test_training_job_is_planned_before_submit(
    crucible_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], host: PluginHost
) -> None:
    toml = """
backend = "no-such-backend"
model_spec = { name = "tiny" }
dataset_spec = { uri = "sample:chat" }
"""
    code, _out, err = run(capsys, "jobs", "submit", write(tmp_path, "t.toml", toml))
    assert code == 2
    assert "the plan refuses this job" in err
    assert "no-such-backend" in err
    assert not db_path().exists()


@pytest.mark.parametrize("action", ["show", "cancel", "retry"])
def test_unknown_id_exits_4(
    crucible_home: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    code, _out, err = run(capsys, "jobs", action, "job-nope")
    assert code == 4
    assert "no job with id 'job-nope'" in err
    assert "hint:" in err


def test_bad_status_filter_exits_2(crucible_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "jobs", "list", "--status", "sleeping")
    assert code == 2
    assert "not a job status" in err


def test_corrupt_database_exits_2_naming_it(
    crucible_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crucible_home.mkdir(parents=True)
    db_path().write_bytes(b"garbage" * 1000)
    code, _, err = run(capsys, "jobs", "list")
    assert code == 2
    assert str(db_path()) in err
    assert "corrupt" in err
    assert "move the file aside" in err


def _pipeline_run(host: PluginHost, job_id: str) -> Path:
    host.add_plugin(StagesPlugin(), name="test-stages")
    e = Experiment(id="e", stages=[StageDef(name="make", uses="store")])
    run_pipeline(e, Job(id=job_id), host=host)
    return run_dir(job_id)


def test_artifacts_verify(
    crucible_home: Path, capsys: pytest.CaptureFixture[str], host: PluginHost
) -> None:
    directory = _pipeline_run(host, "run-v")
    code, out, _ = run(capsys, "artifacts", "verify", "run-v")
    assert code == 0
    assert out.startswith("ok: 1 file(s) match")
    assert run(capsys, "artifacts", "verify", str(directory))[0] == 0
    (directory / "out.txt").write_text("tampered")
    code, out, err = run(capsys, "artifacts", "verify", "run-v")
    assert code == 1
    assert out.startswith("ALTERED  out.txt")
    assert "1 problem(s)" in err
    code, out, _ = run(capsys, "artifacts", "verify", "run-v", "--json")
    report: dict[str, Any] = json.loads(out)
    assert code == 1
    assert report["ok"] is False
    assert report["altered"][0]["path"] == "out.txt"
    (directory / "out.txt").unlink()
    code, out, _ = run(capsys, "artifacts", "verify", "run-v")
    assert (code, out) == (1, "MISSING  out.txt\n")
    assert run(capsys, "artifacts", "verify", "no-such-run")[0] == 4


def test_lineage_show(
    crucible_home: Path, capsys: pytest.CaptureFixture[str], host: PluginHost
) -> None:
    _pipeline_run(host, "run-l")
    code, out, _ = run(capsys, "lineage", "show", "run-l")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("run-l")
    assert lines[1:3] == ["ancestors:", "  (none)"]
    assert lines[3] == "descendants:"
    assert lines[4].startswith("  └── produces sha256:")
    sha = lines[4].split("sha256:")[1][:10]
    code, out, _ = run(capsys, "lineage", "show", f"sha256:{sha}", "--json")
    tree = json.loads(out)
    assert tree["type"] == "artifact"
    assert [(a["id"], a["via"]) for a in tree["ancestors"]] == [("run-l", "produces")]
    assert tree["descendants"] == []
    code, _, err = run(capsys, "lineage", "show", "nothing-like-it")
    assert code == 4
    assert "no record" in err


def test_worker_command_in_process(
    crucible_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], host: PluginHost
) -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    run(capsys, "jobs", "submit", write(tmp_path, "job.toml", JOB_TOML))
    code, _, err = run(
        capsys, "worker", "--exit-when-idle", "--poll", "0.02", "--concurrency", "2", "--progress"
    )
    assert code == 0
    assert "2 slot(s)" in err
    assert "1 claimed, 1 succeeded, 0 failed" in err
    assert signal.getsignal(signal.SIGTERM) is before
    code, out, _ = run(capsys, "jobs", "list", "--status", "succeeded", "--json")
    assert json.loads(out)[0]["result"] == {"args": {"x": 1}, "attempt": 1}
    code, _, err = run(capsys, "worker", "--concurrency", "0")
    assert code == 2
    assert "--concurrency must be a whole number >= 1, got 0" in err


def test_json_job_files_and_wrapped_documents(
    crucible_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs_json = json.dumps([{"id": "a", "kind": "custom"}, {"id": "b", "kind": "custom"}])
    code, out, _ = run(capsys, "jobs", "submit", write(tmp_path, "jobs.json", jobs_json))
    assert (code, out.split()) == (0, ["a", "b"])
    wrapped = json.dumps({"jobs": [{"id": "c"}]})
    assert run(capsys, "jobs", "submit", write(tmp_path, "w.json", wrapped))[1] == "c\n"
    experiment = json.dumps({"id": "exp", "stages": [{"name": "s", "uses": "record"}]})
    code, out, _ = run(capsys, "jobs", "submit", write(tmp_path, "e.json", experiment), "--json")
    (stored,) = json.loads(out)
    assert (stored["kind"], stored["payload"]["id"]) == ("experiment_step", "exp")
    code, _, err = run(capsys, "jobs", "submit", write(tmp_path, "t.json", '{"trace_id": "x"}'))
    assert code == 2
    assert "a Trace is not something to run" in err
    code, _, err = run(capsys, "jobs", "submit", write(tmp_path, "j.json", '{"jobs": 3}'))
    assert code == 2
    assert "`jobs` must be an array" in err
    code, _, err = run(capsys, "jobs", "submit", str(tmp_path / "missing.toml"))
    assert code == 4
    code, _, err = run(capsys, "jobs", "submit", write(tmp_path, "x.yaml", "a: 1"))
    assert code == 2
    assert "cannot tell the format" in err


def test_show_prints_error_result_checkpoint_and_retry_time(
    crucible_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crucible_core.errors import CapacityError
    from crucible_core.ir.backend import CheckpointRef
    from crucible_core.queue.scheduler import Scheduler

    with Scheduler() as sched:
        sched.enqueue(Job(id="s1", kind="custom", constraints=_deps()))
        sched.claim("w")
        sched.record_checkpoint("s1", CheckpointRef(uri="file:///ck/5", step=5))
        sched.fail("s1", CapacityError("busy", hint="wait"), worker_id="w")
        sched.enqueue(Job(id="s2", kind="custom"))
        sched.claim("w")
        sched.cancel("s2")
    code, out, _ = run(capsys, "jobs", "show", "s1")
    assert code == 0
    assert "error     [capacity] busy" in out
    assert "  hint    wait" in out
    assert "resume    file:///ck/5 (step 5)" in out
    assert "next try  in" in out
    code, out, _ = run(capsys, "jobs", "show", "s2")
    assert "(cancel requested)" in out
    code, out, _ = run(capsys, "jobs", "cancel", "s2")
    assert "cancellation requested" in out


def _deps() -> Any:
    from crucible_core.ir.work import Constraints, RetryPolicy

    return Constraints(retry_policy=RetryPolicy(initial_delay_ms=60_000, max_delay_ms=60_000))

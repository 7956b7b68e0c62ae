"""Bad input to the CLI: job files that are not files, and run ids that are not ids.

Each file case spawns the real ``crucible`` (a subprocess with a timeout and
an address-space limit), because the failures being guarded against are a
hang (a FIFO with no writer), unbounded memory (an 8 GB sparse file read
whole) and a traceback. Tests run as root, where ``chmod 000`` does not stop a
read, so the unreadable file is ``/proc/self/mem``: a regular file whose first
page cannot be read by anyone (EIO).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crucible_core.cli.main import main
from crucible_core.cli.runref import resolve_run
from crucible_core.errors import ConfigError, NotFound, ValidationError
from crucible_core.ids import ID_PATTERN, MAX_ID_LENGTH, is_valid_id
from crucible_core.ir import codec
from crucible_core.ir.base import Identifier
from crucible_core.ir.files import read_document
from crucible_core.ir.training import TrainingJob
from crucible_core.records import paths
from crucible_core.records.manifest import RunRecord

_MEMORY_CAP = 2 * 1024**3  # bytes of address space the CLI may use in these tests


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_CAP, _MEMORY_CAP))


def crucible(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRUCIBLE_HOME": str(home)}
    env.pop("CRUCIBLE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "crucible_core.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=home.parent,
        preexec_fn=_cap_memory,
    )


def _bad_file(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.toml"
    if case == "directory":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "sparse":
        with path.open("wb") as f:
            f.truncate(8 * 1024**3)
    elif case == "dev_zero":
        path = tmp_path / "zero.json"
        path.symlink_to("/dev/zero")
    elif case == "unreadable":
        path = tmp_path / "mem.json"
        path.symlink_to("/proc/self/mem")
    return path


_EXPECTED = {
    "directory": "is a directory",
    "fifo": "is a named pipe",
    "sparse": "file is 8589934592 bytes; the limit is",
    "dev_zero": "is a character device",
    "unreadable": "cannot read (Input/output error)",
}
_CASES = list(_EXPECTED)


def _assert_one_line_exit_2(proc: subprocess.CompletedProcess[str], expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    first, *rest = proc.stderr.splitlines()
    assert first.startswith("error: "), proc.stderr
    assert expected in first, proc.stderr
    assert all(line.startswith("  hint: ") for line in rest), proc.stderr


@pytest.mark.parametrize("case", _CASES)
def test_jobs_submit_refuses_what_is_not_a_job_file(tmp_path: Path, case: str) -> None:
    # Before: a FIFO hung, the sparse file was read whole (8 GB) before its size was checked.
    path = _bad_file(tmp_path, case)
    _assert_one_line_exit_2(
        crucible(tmp_path / "home", "jobs", "submit", str(path)), _EXPECTED[case]
    )


@pytest.mark.parametrize("case", _CASES)
def test_ir_validate_refuses_what_is_not_a_document(tmp_path: Path, case: str) -> None:
    # Before: a directory was an IsADirectoryError traceback, a FIFO a hang.
    path = _bad_file(tmp_path, case)
    _assert_one_line_exit_2(
        crucible(tmp_path / "home", "ir", "validate", str(path)), _EXPECTED[case]
    )


@pytest.mark.parametrize("command", ["plan", "train"])
@pytest.mark.parametrize("case", ["directory", "fifo"])
def test_plan_and_train_refuse_what_is_not_a_job_file(
    tmp_path: Path, command: str, case: str
) -> None:
    path = _bad_file(tmp_path, case)
    _assert_one_line_exit_2(crucible(tmp_path / "home", command, str(path)), _EXPECTED[case])


def test_read_document_reads_at_most_limit_plus_one_bytes() -> None:
    # /proc files report size 0: the size check cannot catch them, the bounded read must.
    assert os.stat("/proc/self/status").st_size == 0
    with pytest.raises(ConfigError, match="more than 10 bytes; the limit is 10"):
        read_document("/proc/self/status", limit=10)
    assert read_document("/proc/self/status").startswith(b"Name:")


def test_read_document_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such file"):
        read_document(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="File name too long"):
        read_document(tmp_path / ("x" * 5000 + ".toml"))
    with pytest.raises(ConfigError, match="not a usable path"):
        read_document("a\x00b.toml")
    (tmp_path / "ok.toml").write_bytes(b"x = 1\n")
    assert read_document(tmp_path / "ok.toml") == b"x = 1\n"


# -- run ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["a" * 5000, "../..", "/", "a/b", "..", ""])
@pytest.mark.parametrize("command", [["runs", "show"], ["artifacts", "verify"], ["resume"]])
def test_run_refs_that_are_not_ids_exit_2(tmp_path: Path, command: list[str], ref: str) -> None:
    # Before: 5,000 characters was an OSError traceback; '/' and '../..' were "not found" (4).
    proc = crucible(tmp_path / "home", *command, ref)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "is neither a run id nor a path inside a run directory" in proc.stderr
    assert len(proc.stderr.splitlines()[0]) < 200


@pytest.mark.parametrize("job_id", ["a" * 5000, "../..", "/", ""])
def test_train_refuses_a_bad_job_id_before_doing_anything(tmp_path: Path, job_id: str) -> None:
    example = Path(__file__).parents[1] / "examples" / "sft-local.toml"
    proc = crucible(tmp_path / "home", "train", str(example), "--job-id", job_id)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --job-id ")
    assert "is not a valid id" in proc.stderr
    assert not (tmp_path / "home" / "runs").exists()


@pytest.mark.parametrize("action", ["show", "cancel", "retry"])
def test_job_ids_that_cannot_exist_exit_2(
    crucible_home: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    for bad in ["a" * 5000, "../..", "/", ""]:
        assert main(["jobs", action, "--", bad]) == 2
        assert "is not a valid id" in capsys.readouterr().err
    assert main(["jobs", action, "no-such-job"]) == 4


def test_valid_id_without_a_run_is_not_found(tmp_path: Path) -> None:
    proc = crucible(tmp_path / "home", "runs", "show", "no-such-run")
    assert proc.returncode == 4, proc.stderr


@pytest.fixture
def one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    run = paths.run_dir("run-1")
    run.mkdir(parents=True)
    RunRecord(run).update(job_id="run-1", status="succeeded")
    return run


_refs = st.one_of(
    st.text(max_size=300),
    st.from_regex(ID_PATTERN, fullmatch=True),
    st.sampled_from(["run-1", "home/runs/run-1", "/", "..", "../..", ".", "~", "a" * 5000]),
)


# The fixture's run is only read, never changed, so sharing it between inputs is safe.
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ref=_refs)
def test_any_run_ref_is_found_or_refused_with_exit_2_or_4(
    one_run: Path, capsys: pytest.CaptureFixture[str], ref: str
) -> None:
    code = main(["runs", "show", "--json", "--", ref])
    capsys.readouterr()
    try:
        found = resolve_run(ref)
    except ConfigError:
        assert code == 2
        assert not is_valid_id(ref)
    except NotFound:
        assert code == 4
        assert is_valid_id(ref)
    else:
        assert code == 0
        assert found.resolve() == one_run.resolve()


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(max_size=MAX_ID_LENGTH + 5), st.from_regex(ID_PATTERN)))
def test_one_id_rule_for_ir_run_dirs_and_ids(value: str) -> None:
    valid = is_valid_id(value)
    try:
        codec.convert(value, Identifier)
        ir_ok = True
    except ValidationError:
        ir_ok = False
    assert ir_ok == valid
    try:
        directory = paths.run_dir(value)
    except ConfigError:
        assert not valid
    else:
        assert valid
        assert directory.name == value
        assert directory.parent == paths.crucible_home() / "runs"
        assert "/" not in value
        assert ".." not in value


def test_scheduler_and_ir_refuse_a_slash_in_ids(tmp_path: Path) -> None:
    from crucible_core.cli.ir_cmd import skeleton
    from crucible_core.ir.work import Job
    from crucible_core.queue.scheduler import Scheduler

    document = {**skeleton(TrainingJob), "job_id": "team/run"}
    with pytest.raises(ValidationError, match=r"\$\.job_id"):
        codec.convert(document, TrainingJob)
    assert codec.convert({**document, "job_id": "team-run"}, TrainingJob).job_id == "team-run"
    scheduler = Scheduler(tmp_path / "db.sqlite")
    with pytest.raises(ConfigError, match="is not allowed"):
        scheduler.enqueue(Job(id="a/b"))


def test_run_dirs_follow_the_environment_on_every_call(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Built paths are kept per environment value; a change of CRUCIBLE_HOME still counts."""
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "a"))
    assert paths.run_dir("r1") == tmp_path / "a" / "runs" / "r1"
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "b"))
    assert paths.run_dir("r1") == tmp_path / "b" / "runs" / "r1"
    monkeypatch.setenv("CRUCIBLE_HOME", "  ")
    assert paths.run_dir("r1") == Path(".crucible") / "runs" / "r1"
    monkeypatch.delenv("CRUCIBLE_HOME")
    assert paths.crucible_home() == Path(".crucible")
    for _ in range(2):  # a refusal is never remembered as a path
        with pytest.raises(ConfigError):
            paths.run_dir("../r1")


@settings(max_examples=200, deadline=None)
@given(now=st.floats(min_value=0, max_value=4_000_000_000), prefix=st.sampled_from(["job", "run"]))
def test_new_ids_obey_the_id_rule_and_carry_their_utc_second(now: float, prefix: str) -> None:
    from datetime import UTC, datetime

    from crucible_core.ids import new_id

    made = new_id(prefix, now=now)
    assert is_valid_id(made)
    stamp = datetime.fromtimestamp(int(now), UTC).strftime("%Y%m%d-%H%M%S")
    head, _, tail = made.rpartition("-")
    assert head == f"{prefix}-{stamp}"
    assert len(tail) == 10
    assert int(tail, 16) >= 0
    assert new_id(prefix, now=now) != made  # 40 random bits


def test_new_ids_differ_across_threads_and_a_fork() -> None:
    """Random bytes are read in bulk: threads must not share a draw, nor a forked child
    its parent's unread ones (the child would repeat the parent's next ids)."""
    import threading

    from crucible_core.ids import new_id

    made: list[str] = []
    lock = threading.Lock()

    def draw() -> None:
        ids = [new_id("job", now=0) for _ in range(2000)]
        with lock:
            made.extend(ids)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8000

    new_id("job")  # the pool holds unread bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, new_id("job", now=0).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child.startswith("job-19700101-000000-")
    assert new_id("job", now=0) != child

"""``crucible serve`` and ``crucible tokens`` as real subprocesses: binding rules, SIGTERM
drain (the running job is released with its checkpoint, none lost), kill -9 mid-job and
restart (the job is requeued when its lease lapses and finishes); --workers N worker
processes in the server's process group, supervised."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from crucible_core.ir import TrainingJob, decode_file

ROOT = Path(__file__).resolve().parents[3]
CLI = [sys.executable, "-m", "crucible_core.cli.main"]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "CRUCIBLE_HOME": str(home)}


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=_env(home), capture_output=True, text=True, timeout=60, cwd=ROOT
    )


class _Serve:
    """A ``crucible serve`` subprocess; ``url`` is read from its start-up line."""

    def __init__(self, home: Path, *args: str) -> None:
        # Its own session: the server and its workers are one process group (pgid == pid).
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--port", "0", *args],
            env=_env(home),
            cwd=ROOT,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.pids: list[int] = []
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._pumper = threading.Thread(target=self._pump, daemon=True)
        self._pumper.start()
        self.url = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
            if m:
                self.url = m.group(1)
                pids = re.search(r"\[pids ([\d, ]+)\]", line)
                self.pids = [int(x) for x in pids.group(1).split(", ")] if pids else []
                return
        self.kill()
        pytest.fail(f"crucible serve did not start: {self.log}")

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group (server and workers), and release the pipe."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)
        self._pumper.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def _job(steps: int, save_every: int) -> dict[str, Any]:
    raw: dict[str, Any] = msgspec.to_builtins(
        decode_file(ROOT / "examples" / "dates-local.toml", TrainingJob)
    )
    raw["learning_config"]["max_steps"] = steps
    raw["checkpoint_policy"].update({"save_every": save_every, "keep_last": 2})
    raw["validation_spec"] = {"every_n_steps": 100000, "metrics": ["loss"]}
    raw["dataset_spec"]["uri"] = "examples/data/dates.jsonl"
    return raw


def _steps(home: Path, job_id: str) -> list[int]:
    path = home / "runs" / job_id / "telemetry.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev["kind"] == "train.step":
            out.append(ev["step"])
    return out


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_tokens_cli_shows_the_secret_once_and_stores_only_a_hash(tmp_path: Path) -> None:
    home = tmp_path / "home"
    made = _run(
        home, "tokens", "create", "--tenant", "acme", "--scopes", "jobs:read", "--expires", "30d"
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("crk_")
    assert "shown once" in made.stderr
    secret = token.split("_", 2)[2]
    raw = (home / "server_tokens.db").read_bytes()
    assert secret.encode() not in raw
    listed = _run(home, "tokens", "list", "--json")
    rows = json.loads(listed.stdout)
    assert [r["tenant_id"] for r in rows] == ["acme"]
    assert rows[0]["expires_at"] - rows[0]["created_at"] == pytest.approx(30 * 86400)
    assert secret not in listed.stdout
    assert _run(home, "tokens", "revoke", rows[0]["id"]).returncode == 0
    assert json.loads(_run(home, "tokens", "list", "--json").stdout)[0]["revoked_at"]
    bad = _run(home, "tokens", "create", "--tenant", "acme", "--scopes", "jobs:reed")
    assert bad.returncode == 2
    assert "jobs:reed" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert _run(home, "tokens", "revoke", "nope").returncode == 4


def test_serve_refuses_a_public_bind_without_allow_remote_and_tokens(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = _run(home, "serve", "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2
    assert "--allow-remote" in r.stderr
    r = _run(home, "serve", "--host", "0.0.0.0", "--port", "0", "--allow-remote")
    assert r.returncode == 2
    assert "token" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_sigterm_drains_and_releases_the_running_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    srv = _Serve(home, "--workers", "1", "--drain-timeout", "0.5")
    try:
        job_id = httpx.post(f"{srv.url}/v1/jobs", json=_job(2000, 2), timeout=60).json()["job_id"]
        _wait(lambda: len(_steps(home, job_id)) >= 4, 120, "step 4")
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.wait(60) == 0, srv.log
    finally:
        srv.kill()
    assert any("stopped" in line for line in srv.log)
    # Not lost: released back to the queue with its checkpoint, for the next worker.
    srv2 = _Serve(home, "--workers", "0")
    try:
        view = httpx.get(f"{srv2.url}/v1/jobs/{job_id}", timeout=30).json()
        assert view["job"]["status"] == "queued", view
        assert view["checkpoint"] is not None
        assert view["checkpoint"]["step"] >= 2
    finally:
        srv2.proc.send_signal(signal.SIGTERM)
        srv2.wait(30)
        srv2.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not alive.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def _status(url: str, job_id: str) -> dict[str, Any]:
    return httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()


@pytest.mark.slow
def test_n_worker_processes_supervised_in_one_group_and_sigterm_drains_all(
    tmp_path: Path,
) -> None:
    """--workers 2: two worker processes in the server's process group run two jobs at
    once; a worker killed with SIGKILL is restarted (its job requeued when its lease
    lapses and the restarted worker takes it over); SIGTERM to the server drains both
    (each running job checkpoints and is released back to the queue): none lost."""
    home = tmp_path / "home"
    srv = _Serve(home, "--workers", "2", "--drain-timeout", "0.5", "--lease", "2")
    try:
        assert len(srv.pids) == 2
        assert srv.proc.pid not in srv.pids
        for pid in srv.pids:
            assert os.getpgid(pid) == srv.proc.pid  # one process group, led by the server
        jobs = [
            httpx.post(f"{srv.url}/v1/jobs", json=_job(2000, 2), timeout=60).json()["job_id"]
            for _ in range(2)
        ]
        _wait(lambda: all(len(_steps(home, j)) >= 3 for j in jobs), 180, "both jobs at step 3")
        assert {_status(srv.url, j)["job"]["status"] for j in jobs} == {"running"}

        victim = srv.pids[0]
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: any("exited (-9), restarting" in x for x in srv.log), 30, "the restart")
        _wait(lambda: not _alive(victim), 30, "the victim to be reaped")
        # Its job's lease lapses; the restarted worker takes it over (a second attempt).
        _wait(
            lambda: any(
                _status(srv.url, j)["job"]["attempts"] == 2
                and _status(srv.url, j)["job"]["status"] == "running"
                for j in jobs
            ),
            120,
            "the killed worker's job running again",
        )
        workers = [int(p) for p in re.findall(r"pid (\d+)", " ".join(srv.log))]
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.wait(90) == 0, srv.log
        alive = [p for p in {*srv.pids, *workers} if _alive(p)]
        assert alive == [], srv.log
    finally:
        srv.kill()
    assert any("stopped" in line for line in srv.log)
    assert sum("1 claimed" in x and "1 released" in x for x in srv.log) == 2, srv.log
    srv2 = _Serve(home, "--workers", "0")
    try:
        views = [_status(srv2.url, j) for j in jobs]
        # Both drained: released back to the queue with their checkpoints, none lost.
        assert [v["job"]["status"] for v in views] == ["queued", "queued"], views
        assert all(v["checkpoint"] is not None for v in views), views
    finally:
        srv2.proc.send_signal(signal.SIGTERM)
        srv2.wait(30)
        srv2.kill()


@pytest.mark.slow
def test_kill_9_mid_job_then_restart_requeues_and_finishes_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    srv = _Serve(home, "--workers", "1", "--lease", "2")
    try:
        job_id = httpx.post(f"{srv.url}/v1/jobs", json=_job(24, 4), timeout=60).json()["job_id"]
        _wait(lambda: len(_steps(home, job_id)) >= 9, 120, "step 9")
    finally:
        srv.kill()  # SIGKILL mid-job
    before = _steps(home, job_id)
    srv2 = _Serve(home, "--workers", "1", "--lease", "2")
    try:
        deadline = time.monotonic() + 180
        status = ""
        while time.monotonic() < deadline:
            status = httpx.get(f"{srv2.url}/v1/jobs/{job_id}", timeout=30).json()["job"]["status"]
            if status in ("succeeded", "failed", "dead", "cancelled"):
                break
            time.sleep(0.2)
        assert status == "succeeded", srv2.log
        job = httpx.get(f"{srv2.url}/v1/jobs/{job_id}", timeout=30).json()["job"]
        assert job["attempts"] == 2
        after = _steps(home, job_id)[len(before) :]
        assert after[-1] == 24
        assert after[0] > 1  # resumed from a checkpoint, not started over
    finally:
        srv2.proc.send_signal(signal.SIGTERM)
        srv2.wait(60)
        srv2.kill()

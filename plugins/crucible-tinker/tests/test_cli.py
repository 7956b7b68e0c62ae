"""``crucible serve-tinker``: a real subprocess serving on 127.0.0.1, and its key handling."""

from __future__ import annotations

import argparse
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from crucible_tinker.cli import KEYS_ENV, server_keys

from crucible_core.errors import ConfigError

pytestmark = pytest.mark.timeout(120)


def _read_until(proc: subprocess.Popen[bytes], patterns: list[str], timeout: float) -> list[str]:
    """The first group of each pattern, from the process's stderr (read unbuffered)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        found = [re.search(p, seen) for p in patterns]
        if all(found):
            return [m.group(1) for m in found if m]
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk.decode()
    raise AssertionError(f"no {patterns} in the server's stderr:\n{seen}")


def test_serve_tinker_subprocess_generates_a_key_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {**os.environ, "CRUCIBLE_STRICT_PLUGINS": "1", "CRUCIBLE_HOME": str(tmp_path)}
    env.pop(KEYS_ENV, None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crucible_core.cli.main",
            "serve-tinker",
            "--port",
            "0",
            "--backend",
            "local",
            "--backend-option",
            f"home={tmp_path / 'local'}",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    try:
        url, key = _read_until(
            proc, [r"on (http://127\.0\.0\.1:\d+)", r"generated API key[^:]*: (tml-[0-9a-f]+)"], 90
        )
        with httpx.Client(base_url=f"{url}/api/v1", timeout=10) as http:
            assert http.get("healthz").json() == {"status": "ok"}
            assert http.post("create_session", json={}).status_code == 401
            made = http.post("create_session", json={}, headers={"X-API-Key": key})
            assert made.status_code == 200
            assert made.json()["session_id"].startswith("sess-")
        proc.send_signal(signal.SIGINT)
        # Graceful stop, then the CLI's exit status for an interruption (130), no traceback.
        assert proc.wait(timeout=30) == 130
        assert proc.stderr is not None
        rest = proc.stderr.read().decode()
        assert "Traceback" not in rest
        assert "interrupted" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"api_key": None, "api_key_file": None}
    base.update(kw)
    return argparse.Namespace(**base)


def test_server_keys_from_flags_file_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEYS_ENV, "tml-env1, tml-env2")
    keyfile = tmp_path / "keys"
    keyfile.write_text("tml-file1\ntml-file2\n")
    keyfile.chmod(0o600)
    keys, generated = server_keys(_args(api_key=["tml-flag"], api_key_file=keyfile))
    assert keys == ["tml-flag", "tml-file1", "tml-file2", "tml-env1", "tml-env2"]
    assert not generated
    keyfile.chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        server_keys(_args(api_key_file=keyfile))
    monkeypatch.delenv(KEYS_ENV)
    with pytest.raises(ConfigError, match="tml-"):
        server_keys(_args(api_key=["sk-nope"]))
    keys, generated = server_keys(_args())
    assert generated
    assert re.fullmatch(r"tml-[0-9a-f]{40}", keys[0])


def test_cli_exit_code_for_a_bad_key_file(tmp_path: Path) -> None:
    from crucible_core.cli.main import main

    keyfile = tmp_path / "keys"
    keyfile.write_text("tml-x\n")
    keyfile.chmod(0o664)
    assert main(["serve-tinker", "--api-key-file", str(keyfile), "--port", "0"]) == 2


def test_fault_flags_build_a_fault_config() -> None:
    from crucible_tinker.cli import command, fault_config

    parser = argparse.ArgumentParser()
    command.configure(parser)
    args = parser.parse_args(
        [
            "--inject-latency-ms",
            "50",
            "--inject-error-rate",
            "0.1",
            "--inject-seed",
            "4",
            "--inject-paths",
            "optim_step, forward_backward",
        ]
    )
    faults = fault_config(args)
    assert faults.latency_s == pytest.approx(0.05)
    assert faults.error_fraction == pytest.approx(0.1)
    assert faults.seed == 4
    assert faults.paths == frozenset({"optim_step", "forward_backward"})
    assert faults.active
    assert not fault_config(parser.parse_args([])).active
    with pytest.raises(ConfigError, match="fault injection"):
        fault_config(parser.parse_args(["--inject-drop-rate", "2"]))


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def _send_until_refused(sock: socket.socket, total: int, piece: bytes) -> int:
    """Send up to ``total`` bytes of ``piece``; stop when the server answers or hangs up."""
    sent = 0
    while sent < total:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            break
        try:
            sock.sendall(piece)
        except OSError:  # the server closed the connection: what it should do
            break
        sent += len(piece)
    return sent


def test_oversized_bodies_are_refused_without_the_server_growing(tmp_path: Path) -> None:
    """200 MB bodies against a real ``crucible serve-tinker`` limited to 1 MB: announced
    (Content-Length) they get 413 before a byte is read; chunked they are cut off at the
    limit. The server's peak memory (VmHWM) does not grow by anything like 200 MB."""
    key = "tml-" + "ab" * 20
    keyfile = tmp_path / "keys"
    keyfile.write_text(key + "\n")
    keyfile.chmod(0o600)
    env = {**os.environ, "CRUCIBLE_STRICT_PLUGINS": "1", "CRUCIBLE_HOME": str(tmp_path)}
    env.pop(KEYS_ENV, None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crucible_core.cli.main",
            "serve-tinker",
            "--port",
            "0",
            "--api-key-file",
            str(keyfile),
            "--max-body-bytes",
            str(1 << 20),
            "--backend-option",
            f"home={tmp_path / 'local'}",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    try:
        (url,) = _read_until(proc, [r"on (http://127\.0\.0\.1:\d+)"], 90)
        host, port = url.removeprefix("http://").split(":")
        with httpx.Client(base_url=f"{url}/api/v1", timeout=10) as http:
            assert http.post("create_session", json={}, headers={"X-API-Key": key}).is_success
        before = _peak_rss_kib(proc.pid)
        head = (
            f"POST /api/v1/forward_backward HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n"
            "Content-Type: application/x-protobuf\r\n"
        )
        piece = b"\0" * (1 << 20)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f"{head}Content-Length: {200 << 20}\r\n\r\n".encode())
            answer = sock.recv(4096).decode()
            assert answer.startswith("HTTP/1.1 413"), answer
            assert "connection: close" in answer.lower()
            _send_until_refused(sock, 200 << 20, piece)
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            sent = _send_until_refused(sock, 200 << 20, chunk)
        assert sent < 100 << 20  # refused long before the end
        grown_mib = (_peak_rss_kib(proc.pid) - before) / 1024
        assert grown_mib < 48, f"the server's peak memory grew by {grown_mib:.0f} MiB"
        with httpx.Client(base_url=f"{url}/api/v1", timeout=10) as http:
            assert http.get("healthz").json() == {"status": "ok"}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        rest = proc.stderr.read().decode()
        proc.stderr.close()
    assert "Traceback" not in rest


def test_api_key_on_the_command_line_is_warned_about(capsys: pytest.CaptureFixture[str]) -> None:
    from crucible_core.cli.main import main

    # --max-body-bytes 10 is refused after the key handling: no server starts.
    assert main(["serve-tinker", "--api-key", "tml-x", "--max-body-bytes", "10"]) == 2
    err = capsys.readouterr().err
    assert "--api-key-file" in err
    assert "ps" in err

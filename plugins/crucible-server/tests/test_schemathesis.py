"""schemathesis (the off-the-shelf property-based API tester) against /openapi.json of a
real server: every generated request, valid or not, gets an answer below 500."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from crucible_server.tokens import TokenStore


@pytest.mark.slow
def test_no_generated_request_gets_a_5xx(start_server, tokens: TokenStore, tmp_path: Path) -> None:
    # Not admin: a fuzzed `custom` job must not name a Python function to run
    # (and with workers=0 nothing runs anyway).
    tok, _ = tokens.create("acme", ["jobs:read", "jobs:write", "artifacts:read"])
    srv = start_server(tokens=tokens, workers=0, rate_per_s=10_000.0, rate_burst=10_000)
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None
    # The events stream of a job that exists (its id taken from a fuzzed POST /v1/jobs) stays
    # open while the job is queued, and nothing runs here: schemathesis reads a stream until
    # its request timeout, which cost 30 s a stream (~100 s a run). Its status line and
    # headers, all that not_a_server_error checks, arrive at once; 3 s still leaves them a
    # wide margin on a loaded machine, and every other operation keeps the 30 s timeout.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        '[[operations]]\ninclude-path = "/v1/jobs/{job_id}/events"\nrequest-timeout = 3.0\n'
    )
    done = subprocess.run(
        [
            st, "--config-file", str(config), "run", f"{srv.url}/openapi.json",
            "--checks", "not_a_server_error",
            "--phases", "fuzzing",
            "--max-examples", "10",
            "--generation-deterministic",
            "--header", f"Authorization: Bearer {tok}",
            "--request-timeout", "30",
        ],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its cache stays there
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
    assert "passed" in done.stdout

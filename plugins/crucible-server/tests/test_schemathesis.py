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
    done = subprocess.run(
        [
            st, "run", f"{srv.url}/openapi.json",
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

"""A second client, generated from docs/openapi.json by an off-the-shelf generator
(openapi-python-client), talks to a real server: the document describes the wire.

The generator cannot model two IR schemas (TrainingJob and LearningConfig: object-valued
fields with defaults), so it skips POST /v1/jobs and POST /v1/plan; the job here is
submitted with crucible_server.client and read, listed and cancelled with the generated one.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from crucible_server.client import Client
from crucible_server.tokens import TokenStore

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_generated_client_reads_lists_and_cancels(
    start_server, tokens: TokenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert tool is not None
    out = tmp_path / "gen" / "crucible_api_gen"
    done = subprocess.run(
        [tool, "generate", "--path", str(ROOT / "docs" / "openapi.json"),
         "--output-path", str(out), "--meta", "none"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    monkeypatch.syspath_prepend(str(out.parent))
    gen = importlib.import_module("crucible_api_gen")
    get_job = importlib.import_module("crucible_api_gen.api.jobs.get_job_v1_jobs_job_id_get")
    list_jobs = importlib.import_module("crucible_api_gen.api.jobs.list_jobs_v1_jobs_get")
    cancel = importlib.import_module(
        "crucible_api_gen.api.jobs.cancel_job_v1_jobs_job_id_cancel_post"
    )

    tok, _ = tokens.create("acme", ["jobs:read", "jobs:write"])
    srv = start_server(tokens=tokens, workers=0)
    with Client(srv.url, token=tok) as ours:
        job_id = ours.submit({"kind": "experiment_step", "payload": {}}).job_id
    with gen.AuthenticatedClient(base_url=srv.url, token=tok) as theirs:
        view = get_job.sync(job_id=job_id, client=theirs)
        assert type(view).__name__ == "JobView"
        assert view.job.id == job_id
        assert view.job.status.value == "queued"
        page = list_jobs.sync(client=theirs, limit=10)
        assert [j.id for j in page.items] == [job_id]
        cancelled = cancel.sync(job_id=job_id, client=theirs)
        assert cancelled.status.value == "cancelled"
        missing = get_job.sync_detailed(job_id="job-missing", client=theirs)
        assert missing.status_code == 404
        assert type(missing.parsed).__name__ == "Problem"
        assert missing.parsed.code == "not_found"

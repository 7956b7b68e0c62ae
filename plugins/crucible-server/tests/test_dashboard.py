"""The dashboard's HTML shells and ``/ui/api`` routes over real HTTP (uvicorn on 127.0.0.1).

What a browser does with them is in test_dashboard_browser.py; here: the
pages carry no data and a strict CSP, names are escaped, the JSON routes keep
tenants apart, scopes hold, sha256 and diffs are right.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from crucible_server.tokens import TokenStore

from crucible_core.records.paths import run_dir

TICKS = {"kind": "custom", "payload": {"target": "server_test_jobs:ticks", "args": {"n": 3}}}


def _wait_terminal(c, job_id: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = c.get(f"/v1/jobs/{job_id}").json()["job"]["status"]
        if status in ("succeeded", "failed", "cancelled", "dead"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"{job_id} did not finish")


def test_pages_are_shells_with_a_strict_csp(start_server, http, tokens: TokenStore) -> None:
    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=0)
    anon = http(srv)
    for path in ("/", "/experiments", "/models", "/compare?runs=a,b", "/lineage/job_x"):
        r = anon.get(path)  # no token: the shell still loads, the JS asks for one
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "<script>" not in r.text  # no inline script at all
        assert 'src="/ui/static/dashboard.js"' in r.text
    assert tok not in anon.get("/").text


def test_unknown_run_is_a_404_page_with_a_link_back(start_server, http) -> None:
    srv = start_server(workers=0)  # open mode: the server itself knows the job is missing
    r = http(srv).get("/runs/job_nope")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert '<a href="/">Back to the jobs</a>' in r.text


def test_with_tokens_the_run_shell_does_not_tell_which_ids_exist(
    start_server, http, tokens: TokenStore
) -> None:
    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=0)
    c = http(srv, tok)
    job_id = c.post("/v1/jobs", json=TICKS).json()["job_id"]
    known, unknown = http(srv).get(f"/runs/{job_id}"), http(srv).get("/runs/job_nope")
    assert known.status_code == unknown.status_code == 200
    assert known.text.replace(job_id, "X") == unknown.text.replace("job_nope", "X")


def test_ids_in_urls_are_escaped_in_the_html(start_server, http) -> None:
    srv = start_server(workers=0)
    evil = '"><img src=x onerror=alert(1)>'
    for path in (f"/lineage/{evil}", f"/compare?runs={evil},x"):
        r = http(srv).get(path)
        assert r.status_code == 200
        assert "<img" not in r.text
        assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in r.text


def test_static_files_and_vendored_licence_are_served(start_server, http) -> None:
    srv = start_server(workers=0)
    c = http(srv)
    js = c.get("/ui/static/vendor/uPlot.iife.min.js")
    assert js.status_code == 200
    assert "uPlot" in js.text
    assert "MIT License" in c.get("/ui/static/vendor/uPlot.LICENSE").text
    assert c.get("/ui/static/dashboard.js").status_code == 200
    assert c.get("/ui/static/dashboard.css").status_code == 200
    assert c.get("/ui/static/../app.py").status_code == 404


def test_ui_routes_are_not_in_the_public_openapi(start_server, http) -> None:
    srv = start_server(workers=0)
    paths = http(srv).get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/ui") or p in ("/", "/runs/{job_id}")]


def test_whoami_and_scopes(start_server, http, tokens: TokenStore) -> None:
    ro, _ = tokens.create("acme", ["jobs:read"])
    srv = start_server(tokens=tokens, workers=0)
    assert http(srv).get("/ui/api/whoami").status_code == 401
    assert http(srv, "crk_bad_token").get("/ui/api/whoami").status_code == 401
    me = http(srv, ro).get("/ui/api/whoami").json()
    assert me == {"tenant": "acme", "scopes": ["jobs:read"], "open": False}
    # A read-only token may not see artifacts' hashes, roll a model back, nor see the
    # lineage of a node shared by every tenant.
    assert http(srv, ro).get("/ui/api/jobs/job_x/artifacts").status_code == 403
    assert http(srv, ro).post("/ui/api/models/m/aliases/prod/rollback").status_code == 403
    assert http(srv, ro).get("/ui/api/lineage?node=dataset:x").status_code == 403


def test_jobs_with_progress_keep_tenants_apart(start_server, http, tokens: TokenStore) -> None:
    a, _ = tokens.create("acme", ["admin"])
    b, _ = tokens.create("other", ["admin"])
    srv = start_server(tokens=tokens, workers=1)
    ca, cb = http(srv, a), http(srv, b)
    job_id = ca.post("/v1/jobs", json={**TICKS, "metadata": {"name": "ticker"}}).json()["job_id"]
    assert _wait_terminal(ca, job_id) == "succeeded"
    rows = ca.get("/ui/api/jobs").json()["items"]
    assert [(r["id"], r["name"], r["status"]) for r in rows] == [(job_id, "ticker", "succeeded")]
    assert cb.get("/ui/api/jobs").json()["items"] == []
    assert cb.get(f"/ui/api/jobs/{job_id}/artifacts").status_code == 404
    assert cb.get(f"/ui/api/diff?runs={job_id},{job_id}").status_code == 404
    assert ca.get("/ui/api/jobs?status=running").json()["items"] == []


def test_artifacts_carry_their_sha256(start_server, http) -> None:
    srv = start_server(workers=1)
    c = http(srv)
    job_id = c.post("/v1/jobs", json=TICKS).json()["job_id"]
    assert _wait_terminal(c, job_id) == "succeeded"
    (run_dir(job_id) / "extra.bin").write_bytes(b"\x00\x01payload")
    (run_dir(job_id) / ".hidden").write_bytes(b"x")
    items = {a["path"]: a for a in c.get(f"/ui/api/jobs/{job_id}/artifacts").json()["items"]}
    assert ".hidden" not in items
    assert items["extra.bin"]["sha256"] == hashlib.sha256(b"\x00\x01payload").hexdigest()
    for path, a in items.items():
        body = c.get(a["url"])
        assert hashlib.sha256(body.content).hexdigest() == a["sha256"], path


def test_diff_is_the_runs_diff_of_the_manifests(start_server, http, tmp_path: Path) -> None:
    srv = start_server(workers=0)
    c = http(srv)
    ids = [c.post("/v1/jobs", json=TICKS).json()["job_id"] for _ in range(3)]
    for i, job_id in enumerate(ids[:2]):
        run_dir(job_id).mkdir(parents=True, exist_ok=True)
        (run_dir(job_id) / "manifest.json").write_text(
            f'{{"seed": {i}, "backend": {{"name": "local"}}}}'
        )
    d = c.get(f"/ui/api/diff?runs={','.join(ids)}").json()
    assert d["base"] == ids[0]
    assert d["diffs"][0] == {"run": ids[1], "changes": [{"key": "seed", "a": 0, "b": 1}]}
    # The third never started: everything in the base's record differs.
    assert {ch["key"] for ch in d["diffs"][1]["changes"]} == {"seed", "backend.name"}
    assert c.get(f"/ui/api/diff?runs={ids[0]}").status_code == 400
    assert c.get("/ui/api/diff?runs=" + ",".join(ids * 2)).status_code == 400


def grid_file(tmp_path: Path) -> Path:
    """A crucible-harness experiment file over the README job: 2 learning rates x 2 seeds."""
    root = Path(__file__).resolve().parents[3]
    path = tmp_path / "grid.toml"
    path.write_text(
        'id = "lr-grid"\nseeds = [0, 1]\n'
        f'metadata = {{ job = "{root / "examples" / "dates-local.toml"}" }}\n'
        '[parameter_grid]\n"learning_config.optimizer.lr" = [0.001, 0.005]\n'
    )
    return path


def test_experiments_group_the_harness_cells_per_tenant(
    start_server, http, tokens: TokenStore, tmp_path: Path
) -> None:
    from crucible_harness.experiment import load, submit

    a, _ = tokens.create("default", ["jobs:read"])
    b, _ = tokens.create("other", ["jobs:read"])
    srv = start_server(tokens=tokens, workers=0)
    submit(load(grid_file(tmp_path)), srv.scheduler)  # as `crucible experiment run` does
    (listed,) = http(srv, a).get("/ui/api/experiments").json()["items"]
    assert (listed["id"], listed["cells"], listed["statuses"]) == ("lr-grid", 4, {"queued": 4})
    x = http(srv, a).get("/ui/api/experiments/lr-grid").json()
    assert x["keys"] == ["learning_config.optimizer.lr"]
    cells = {(c["overrides"]["learning_config.optimizer.lr"], c["seed"]) for c in x["cells"]}
    assert cells == {(lr, s) for lr in ("0.001", "0.005") for s in ("0", "1")}
    assert http(srv, b).get("/ui/api/experiments").json()["items"] == []
    assert http(srv, b).get("/ui/api/experiments/lr-grid").status_code == 404


def test_a_finished_cell_shows_the_harness_metrics_of_its_run() -> None:
    from crucible_server.dashboard.experiments import experiment_cells

    from crucible_core.ir.work import Job

    meta = {"experiment": "g", "overrides": {"seed": "1"}, "seed": "1"}
    done = Job(id="cell-a", kind="training_run", status="succeeded", metadata=meta)
    running = Job(id="cell-b", kind="training_run", status="running", metadata=meta)
    other = Job(id="cell-c", kind="training_run", status="succeeded", metadata={})
    run_dir("cell-a").mkdir(parents=True)
    summary = '{"final_loss": 0.25, "steps": 8, "evaluation": {"validation": {"loss": 0.5}}}'
    (run_dir("cell-a") / "manifest.json").write_text(f'{{"training": {summary}}}')
    x = experiment_cells([done, running, other], "g")
    assert [c["id"] for c in x["cells"]] == ["cell-a", "cell-b"]
    assert x["cells"][0]["metrics"] == {
        "final_loss": 0.25,
        "steps": 8.0,
        "evaluation.validation.loss": 0.5,
    }
    assert x["cells"][1]["metrics"] == {}


def test_jobs_show_the_total_of_a_run_whose_start_left_the_tail(start_server, http) -> None:
    """train.start is far from the end of a long run's telemetry: the total still shows."""
    srv = start_server(workers=1)
    c = http(srv)
    job = {
        "kind": "custom",
        "payload": {"target": "dashboard_test_jobs:curves", "args": {"n": 150}},
    }
    job_id = c.post("/v1/jobs", json=job).json()["job_id"]
    assert _wait_terminal(c, job_id) == "succeeded"
    assert (run_dir(job_id) / "telemetry.jsonl").stat().st_size > 3 * 8192
    for _ in range(2):  # computed, then from the cache
        (row,) = c.get("/ui/api/jobs").json()["items"]
        assert (row["progress"]["step"], row["progress"]["total_steps"]) == (150, 150)


def quality_grid_file(tmp_path: Path) -> Path:
    """:func:`grid_file` with the quality target ``final_loss <= 0.5``."""
    path = grid_file(tmp_path)
    target = '[[quality_targets]]\nmetric = "final_loss"\nop = "<="\nvalue = 0.5\n'
    path.write_text(path.read_text().replace("[parameter_grid]", target + "[parameter_grid]"))
    return path


def finish_a_cell(scheduler: Any, loss: float) -> str:
    """Claim the next queued cell and complete it with a manifest and a loss curve, as
    its run would leave them (the run itself is covered by crucible-harness's tests)."""
    from crucible_core.records.events import TELEMETRY_FILE

    job = scheduler.claim("w-test")
    root = run_dir(job.id)
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"training": {"final_loss": loss}}))
    lines = [
        {"ts": 1.0 + i, "job_id": job.id, "kind": "train.step", "step": i,
         "data": {"loss": loss * (4 - i)}}
        for i in (1, 2, 3)
    ]  # fmt: skip
    (root / TELEMETRY_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    scheduler.complete(job.id, {"ok": True}, worker_id="w-test")
    return job.id


def test_experiment_report_tables_and_html_come_from_the_cells_stored_experiment(
    start_server, http, tokens: TokenStore, tmp_path: Path
) -> None:
    """The experiment is stored with its cells at submit time: the server renders the
    harness report (quality targets, HTML with figures) from the queue alone, the same
    bytes `crucible experiment report` writes; another tenant gets 404."""
    from crucible_harness.experiment import load, submit
    from crucible_harness.expreport import write_reports
    from crucible_server.dashboard.routes import REPORT_CSP

    a, _ = tokens.create("default", ["jobs:read"])
    b, _ = tokens.create("other", ["jobs:read"])
    path = quality_grid_file(tmp_path)
    srv = start_server(tokens=tokens, workers=0)
    loaded = load(path)
    submit(loaded, srv.scheduler)
    path.unlink()  # the server needs the queue only, not the file
    good = finish_a_cell(srv.scheduler, 0.25)
    bad = finish_a_cell(srv.scheduler, 0.75)
    c = http(srv, a)
    rep = c.get("/ui/api/experiments/lr-grid/report").json()
    assert rep["intro"][0] == "Experiment `lr-grid`."
    tables = {t["title"]: t for t in rep["tables"]}
    quality = tables["Quality targets"]
    assert quality["headers"] == ["cell", "target", "observed", "met"]
    assert sorted(quality["rows"]) == sorted(
        [[good, "final_loss <= 0.5", "0.25", "yes"], [bad, "final_loss <= 0.5", "0.75", "no"]]
    )
    assert len(tables["Cells"]["rows"]) == 4
    r = c.get("/ui/api/experiments/lr-grid/report.html")
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == REPORT_CSP
    assert r.headers["content-disposition"].startswith("attachment")
    assert r.text.count('src="data:image/png;base64,') >= 2  # the loss curves, by lr
    written = write_reports(loaded, tmp_path / "rep", srv.scheduler)
    assert r.content == written["html"].read_bytes()
    assert c.get("/ui/api/experiments/lr-grid/report.html").content == r.content  # cached
    other = http(srv, b)
    assert other.get("/ui/api/experiments/lr-grid/report").status_code == 404
    assert other.get("/ui/api/experiments/lr-grid/report.html").status_code == 404
    assert http(srv).get("/ui/api/experiments/lr-grid/report.html").status_code == 401


def test_experiment_report_of_cells_without_a_stored_experiment_is_404() -> None:
    from crucible_server.dashboard.experiments import Reports

    from crucible_core.errors import NotFound
    from crucible_core.ir.work import Job

    old = Job(id="c", kind="custom", metadata={"experiment": "g", "seed": "0"})
    with pytest.raises(NotFound, match="older crucible-harness"):
        Reports().tables(None, [old], "g")

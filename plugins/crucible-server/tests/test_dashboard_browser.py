"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
against a real uvicorn on 127.0.0.1.

One browser per module; each test has its own server and browser context.
Screenshots go to ``tmp/artifacts/dashboard/`` at the repository root (kept by
CI as test artifacts; ``CRUCIBLE_TEST_ARTIFACTS`` moves them). scripts/test.sh
installs chromium when it is missing.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from crucible_server.tokens import TokenStore
from test_dashboard_models import toy  # noqa: F401  (the toy backend fixture)

from crucible_core.ir import TrainingJob, decode_file

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = "/usr/bin/chromium"
#: The network is closed on CI machines: without these Chromium stalls on start.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = (
    Path(os.environ.get("CRUCIBLE_TEST_ARTIFACTS", ROOT / "tmp" / "artifacts")) / "dashboard"
)
T = 20_000  # ms: the longest any single wait in the page may take


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """``open_page(url, token=None, width=1280)``: a page in a fresh context.

    Each context has its own sessionStorage, so tokens do not leak between tests."""
    contexts: list[Any] = []

    def make(url: str, token: str | None = None, width: int = 1280, csp: bool = False) -> Any:
        # bypass_csp: Playwright's wait_for_function evaluates strings, which the pages'
        # CSP forbids. It also means the XSS test proves the escaping alone, without the
        # CSP's help. test_pages_work_under_their_own_csp keeps the CSP.
        ctx = browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=not csp)
        contexts.append(ctx)
        if token is not None:
            # As if entered once in this tab: set before the first page only.
            ctx.add_init_script(
                f"if (!sessionStorage.getItem('crucible.token'))"
                f" sessionStorage.setItem('crucible.token', {token!r})"
            )
        page = ctx.new_page()
        page.set_default_timeout(T)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "console",
            lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
        )
        page.js_errors = errors
        page.goto(url)
        return page

    yield make
    for ctx in contexts:
        ctx.close()


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _dates_job(steps: int) -> dict[str, Any]:
    raw: dict[str, Any] = msgspec.to_builtins(
        decode_file(ROOT / "examples" / "dates-local.toml", TrainingJob)
    )
    raw["learning_config"]["max_steps"] = steps
    raw["checkpoint_policy"].update({"save_every": 10, "keep_last": 1})
    raw["validation_spec"] = {"every_n_steps": 10, "metrics": ["loss"]}
    raw["dataset_spec"]["uri"] = "examples/data/dates.jsonl"
    raw["metadata"] = {"name": "dates (dashboard test)"}
    return raw


def _curves(n: int, delay_s: float, **extra: Any) -> dict[str, Any]:
    args = {"n": n, "delay_s": delay_s, **extra.pop("args", {})}
    return {
        "kind": "custom",
        "payload": {"target": "dashboard_test_jobs:curves", "args": args},
        **extra,
    }


def _points(page: Any) -> int:
    return int(page.locator("#points").inner_text())


def _wait_status(c: Any, job_id: str, status: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while c.get(f"/v1/jobs/{job_id}").json()["job"]["status"] != status:
        assert time.monotonic() < deadline, f"{job_id} never became {status}"
        time.sleep(0.05)


@pytest.mark.slow
def test_run_page_chart_grows_live_and_resumes_after_a_drop(
    start_server, http, tokens: TokenStore, open_page
) -> None:
    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=1)
    c = http(srv, tok)
    job_id = c.post("/v1/jobs", json=_dates_job(steps=400)).json()["job_id"]
    page = open_page(f"{srv.url}/runs/{job_id}", token=tok)
    # Starting the training (torch, the model, the data) may take long on a loaded machine.
    page.wait_for_function(
        "Number(document.getElementById('points').textContent) >= 3", timeout=120_000
    )
    first = _points(page)
    page.wait_for_function("document.getElementById('chart-loss').dataset.points !== undefined")
    drawn = page.locator("#chart-loss").get_attribute("data-points")
    assert page.locator("#stream-state").inner_text() == "live"
    # While the job runs, the loss chart gains points without a reload.
    page.wait_for_function(
        f"Number(document.getElementById('chart-loss').dataset.points) > {drawn}"
    )
    assert _points(page) > first
    assert page.locator("#run-status").inner_text() == "running"
    assert page.locator("#run-name").inner_text() == "dates (dashboard test)"
    # Drop the connection: the page says so, reconnects with Last-Event-ID, and
    # draws nothing twice.
    page.evaluate("window.crucibleDebug.dropStream()")
    page.wait_for_function("document.getElementById('stream-state').textContent !== 'live'")
    assert "reconnecting" in page.locator("#stream-state").inner_text()
    page.wait_for_function("document.getElementById('stream-state').textContent === 'live'")
    before = _points(page)
    page.wait_for_function(f"Number(document.getElementById('points').textContent) > {before}")
    shot(page, "run-page")
    c.post(f"/v1/jobs/{job_id}/cancel")
    page.wait_for_function(
        "document.getElementById('stream-state').textContent.startsWith('ended')"
    )
    ids = page.evaluate("window.crucibleDebug.eventIds")
    assert ids == list(range(1, len(ids) + 1))  # every line once, in order, across the drop
    assert page.evaluate("window.crucibleDebug.drops") == 1
    page.wait_for_function("document.getElementById('run-status').textContent === 'cancelled'")
    # Artifacts list with sha256 once the run wrote files; config and plan are shown.
    page.wait_for_selector("#artifacts tbody tr")
    assert len(page.locator("#artifacts td.hash").first.inner_text()) == 64
    assert '"max_steps": 400' in page.locator("#config").inner_text()
    page.wait_for_function("document.getElementById('plan').textContent.includes('steps')")
    assert page.js_errors == []


def test_run_page_resumes_when_the_server_drops_the_stream(
    start_server, http, tokens: TokenStore, open_page
) -> None:
    """The server side drops the SSE connection: the uvicorn serving the page is stopped
    mid-run (its connections closed) and a new one is started on the same port over the
    same queue, while a worker outside both servers keeps writing the job's events. The
    page says "reconnecting", then resumes with Last-Event-ID: every event once, in
    order, and every step on the chart."""
    import threading

    from crucible_core.queue.scheduler import Scheduler
    from crucible_core.queue.worker import Worker

    n = 80
    tok, _ = tokens.create("acme", ["admin"])
    first = start_server(tokens=tokens, workers=0)
    job_id = http(first, tok).post("/v1/jobs", json=_curves(n, 0.08)).json()["job_id"]
    scheduler = Scheduler()
    worker = Worker(scheduler, concurrency=1, lease_s=5.0, poll_s=0.02)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        page = open_page(f"{first.url}/runs/{job_id}", token=tok)
        page.wait_for_function("Number(document.getElementById('points').textContent) >= 5")
        assert page.locator("#stream-state").inner_text() == "live"
        first.stop()
        page.locator("#stream-state", has_text="reconnecting").wait_for()
        before = _points(page)
        assert before < 2 * n  # dropped mid-run (a loss and a metric per step)
        seen = len(page.evaluate("window.crucibleDebug.eventIds"))
        second = start_server(tokens=tokens, workers=0, port=first.port)
        assert second.url == first.url
        page.wait_for_function("document.getElementById('stream-state').textContent === 'live'")
        page.wait_for_function(
            "document.getElementById('stream-state').textContent.startsWith('ended')"
        )
    finally:
        worker.stop()
        thread.join(30)
        scheduler.close()
    ids = page.evaluate("window.crucibleDebug.eventIds")
    assert ids == list(range(1, len(ids) + 1))  # every line once, in order, across the drop
    assert len(ids) > seen  # events after the drop came from the new server
    assert page.evaluate("window.crucibleDebug.drops") == 0  # the server dropped it, not us
    assert page.locator("#chart-loss").get_attribute("data-points") == str(n)
    assert _points(page) == 2 * n
    assert page.js_errors == []


def test_cancel_from_the_page_after_confirmation(
    start_server, http, tokens: TokenStore, open_page
) -> None:
    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=1)
    c = http(srv, tok)
    job_id = c.post("/v1/jobs", json=_curves(100000, 0.05)).json()["job_id"]
    _wait_status(c, job_id, "running")
    page = open_page(f"{srv.url}/runs/{job_id}", token=tok)
    cancel = page.locator("#cancel")
    cancel.wait_for(state="visible")
    page.once("dialog", lambda d: d.dismiss())  # "no": nothing happens
    cancel.click()
    time.sleep(0.3)
    assert c.get(f"/v1/jobs/{job_id}").json()["job"]["status"] == "running"
    page.once("dialog", lambda d: d.accept())
    cancel.click()
    page.wait_for_function("document.getElementById('run-status').textContent === 'cancelled'")
    assert c.get(f"/v1/jobs/{job_id}").json()["job"]["status"] == "cancelled"
    assert cancel.is_hidden()
    assert page.locator("#retry").is_visible()  # a cancelled job may be retried
    shot(page, "run-page-cancelled")
    page.once("dialog", lambda d: d.accept())
    with page.expect_navigation():
        page.locator("#retry").click()
    page.wait_for_function("document.getElementById('run-status').textContent === 'running'")
    assert page.locator("#cancel").is_visible()
    c.post(f"/v1/jobs/{job_id}/cancel")
    assert page.js_errors == []


def test_a_read_only_token_sees_no_cancel_and_the_api_refuses_it(
    start_server, http, tokens: TokenStore, open_page
) -> None:
    admin, _ = tokens.create("acme", ["admin"])
    ro, _ = tokens.create("acme", ["jobs:read"])
    srv = start_server(tokens=tokens, workers=1)
    c = http(srv, admin)
    job_id = c.post("/v1/jobs", json=_curves(100000, 0.05)).json()["job_id"]
    _wait_status(c, job_id, "running")
    page = open_page(f"{srv.url}/runs/{job_id}", token=ro)
    page.wait_for_function("Number(document.getElementById('points').textContent) >= 2")
    page.wait_for_function("document.getElementById('run-status').textContent === 'running'")
    assert page.locator("#cancel").is_hidden()
    assert "lacks the artifacts:read scope" in page.locator("#artifacts-state").inner_text()
    status = page.evaluate(
        """async (id) => (await fetch(`/v1/jobs/${id}/cancel`, {method: 'POST', headers: {
             Authorization: `Bearer ${sessionStorage.getItem('crucible.token')}`}})).status""",
        job_id,
    )
    assert status == 403
    assert c.get(f"/v1/jobs/{job_id}").json()["job"]["status"] == "running"
    c.post(f"/v1/jobs/{job_id}/cancel")


def test_an_expired_or_wrong_token_prompts_for_one_kept_for_the_session(
    start_server, http, tokens: TokenStore, open_page
) -> None:
    tok, _ = tokens.create("acme", ["admin"])
    expired, _ = tokens.create("acme", ["admin"], expires_in_s=0.5)
    srv = start_server(tokens=tokens, workers=0)
    job_id = http(srv, tok).post("/v1/jobs", json=_curves(1, 0)).json()["job_id"]
    time.sleep(0.6)
    page = open_page(f"{srv.url}/", token=expired)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    panel = page.locator("#token-panel")
    panel.wait_for(state="visible")
    assert "refused" in page.locator("#token-reason").inner_text()
    assert page.locator("#jobs-state").inner_text() == "Waiting for a token (above)."
    shot(page, "token-prompt")
    page.fill("#token-input", tok)
    with page.expect_navigation():
        page.press("#token-input", "Enter")
    page.wait_for_selector(f"tr[data-job='{job_id}']")
    assert panel.is_hidden()
    assert page.evaluate("sessionStorage.getItem('crucible.token')") == tok
    assert "tenant acme" in page.locator("#whoami").inner_text()
    assert urls
    assert not [u for u in urls if tok in u or expired in u]
    # A wrong token is refused the same way.
    page.get_by_role("button", name="Token").click()
    page.fill("#token-input", "crk_wrong_secret")
    with page.expect_navigation():
        page.press("#token-input", "Enter")
    panel.wait_for(state="visible")
    assert "refused" in page.locator("#token-reason").inner_text()


def test_unknown_run_with_tokens_shows_not_found_with_a_link_back(
    start_server, tokens: TokenStore, open_page
) -> None:
    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=0)
    page = open_page(f"{srv.url}/runs/job_nope", token=tok)
    page.locator("#run-missing").wait_for(state="visible")
    assert page.locator("#run").is_hidden()
    page.locator("#run-missing a").click()
    page.wait_for_url(f"{srv.url}/")


def test_jobs_update_live_and_script_in_job_and_metric_names_is_shown_as_text(
    start_server, http, tokens: TokenStore, open_page
) -> None:
    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=1)
    c = http(srv, tok)
    name = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>' + "A" * 300
    metric = "<script>window.__xss=3</script><img src=y onerror=window.__xss=4>"
    job = _curves(5, 0, args={"metric": metric}, metadata={"name": name})
    page = open_page(f"{srv.url}/", token=tok)
    page.locator("#jobs-state").filter(has_text="No jobs match").wait_for()
    # Submitted while the page is open: the row appears and finishes without a reload.
    job_id = c.post("/v1/jobs", json=job).json()["job_id"]
    row = page.locator(f"tr[data-job='{job_id}']")
    row.locator("td.status-succeeded").wait_for()
    assert row.locator("td").nth(2).inner_text() == name
    assert row.locator("td").nth(6).inner_text() == "5/5"  # progress
    page.select_option("#f-status", "running")  # a filter hides it
    row.wait_for(state="detached")
    page.select_option("#f-status", "succeeded")
    row.wait_for()
    page.goto(f"{srv.url}/runs/{job_id}")
    page.wait_for_function(
        "document.getElementById('stream-state').textContent.startsWith('ended')"
    )
    assert page.locator("#run-name").inner_text() == name
    page.get_by_text(metric, exact=True).first.wait_for()  # the chart's legend, as text
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src=x], img[src=y]").count() == 0
    assert page.js_errors == []


def test_accessibility_basics_and_a_narrow_screen(
    start_server, http, tokens: TokenStore, open_page
) -> None:
    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=1)
    c = http(srv, tok)
    job_id = c.post("/v1/jobs", json=_curves(20, 0, metadata={"name": "a11y"})).json()["job_id"]
    _wait_status(c, job_id, "succeeded")
    audit = (Path(__file__).parent / "a11y_audit.js").read_text()
    for width in (1280, 375):
        for path in ("/", f"/runs/{job_id}"):
            page = open_page(f"{srv.url}{path}", token=tok, width=width)
            page.wait_for_selector(
                f"tr[data-job='{job_id}']" if path == "/" else "#chart-loss .u-over"
            )
            assert page.evaluate(audit) == [], (path, width)
            # Keyboard: the first Tab reaches the skip link, which moves focus to the content.
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.className") == "skip"
            page.keyboard.press("Enter")
            assert page.evaluate("document.activeElement.id") == "main"
            if width == 375:
                shot(page, "narrow-jobs" if path == "/" else "narrow-run")
            assert page.js_errors == []


def test_compare_overlays_runs_with_their_diff_and_lineage_is_drawn(
    start_server, http, tokens: TokenStore, open_page
) -> None:
    from crucible_core.records.lineage import LineageRecorder
    from crucible_core.records.paths import run_dir

    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=1)
    c = http(srv, tok)
    ids = [c.post("/v1/jobs", json=_curves(n, 0)).json()["job_id"] for n in (4, 6)]
    for i, job_id in enumerate(ids):
        _wait_status(c, job_id, "succeeded")
        (run_dir(job_id) / "manifest.json").write_text(f'{{"seed": {i}}}')
    page = open_page(f"{srv.url}/", token=tok)
    for job_id in ids:
        page.get_by_label(f"Select {job_id} to compare").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Compare selected (2)").click()
    assert page.url == f"{srv.url}/compare?runs={ids[0]},{ids[1]}"  # in the order ticked
    page.wait_for_function(
        "Number(document.getElementById('chart-compare-loss').dataset.points) === 10"
    )
    for job_id in ids:
        page.get_by_text(f"{job_id} train loss", exact=True).wait_for()
    rows = page.locator("#diff tbody tr")
    assert rows.count() == 1
    assert rows.first.inner_text().split("\t") == ["seed", "0", "1"]
    # A file downloads through the token-carrying fetch; its bytes have the listed sha256.
    page.goto(f"{srv.url}/runs/{ids[0]}")
    row = page.locator("#artifacts tbody tr", has_text="telemetry.jsonl")
    listed = row.locator("td.hash").inner_text()
    with page.expect_download() as dl:
        row.get_by_role("link").click()
    saved = Path(dl.value.path())
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == listed
    assert dl.value.suggested_filename == "telemetry.jsonl"
    # Lineage: the run between what it consumed and what it produced, as SVG.
    with LineageRecorder(srv.scheduler.path) as rec:
        rec.add_edge(ids[0], "dataset:dates", "consumes")
        rec.add_edge("sha256:" + "ab" * 32, ids[0], "derived_from")
    page.goto(f"{srv.url}/lineage/{ids[0]}")
    svg = page.locator("#lineage svg")
    svg.wait_for()
    assert svg.locator("rect").count() >= 2
    assert ids[0] in (svg.locator("title").first.text_content() or "")
    # The dataset's own lineage (admin: a dataset links runs of every tenant) shows the run.
    with page.expect_navigation():
        svg.locator('a[href="/lineage?node=dataset%3Adates"]').click()
    page.locator(f'#lineage svg a[href="/runs/{ids[0]}"]').wait_for()
    assert page.js_errors == []


def test_experiments_list_and_grid_of_cells(
    start_server, tokens: TokenStore, open_page, tmp_path: Path
) -> None:
    from crucible_harness.experiment import load, submit
    from test_dashboard import finish_a_cell, quality_grid_file

    tok, _ = tokens.create("default", ["jobs:read"])
    srv = start_server(tokens=tokens, workers=0)
    submit(load(quality_grid_file(tmp_path)), srv.scheduler)
    cell = finish_a_cell(srv.scheduler, 0.75)
    # Under the pages' own CSP: the report's figures (data: URIs) must show with it.
    page = open_page(f"{srv.url}/experiments", token=tok, csp=True)
    with page.expect_navigation():
        page.get_by_role("link", name="lr-grid").click()
    page.wait_for_selector("#cells tbody tr")
    assert page.locator("#cells tbody tr").count() == 4
    head = page.locator("#cells thead th").all_inner_texts()
    assert head[:4] == ["cell", "learning_config.optimizer.lr", "seed", "status"]
    assert page.locator("#experiment-compare").is_visible()
    # The harness report: its quality-target table, and its figures and download.
    quality = page.locator("#report-quality-targets tbody tr")
    quality.first.wait_for()
    assert quality.first.locator("td").all_inner_texts() == [
        cell,
        "final_loss <= 0.5",
        "0.75",
        "no",
    ]
    page.locator("#report-figures img").first.wait_for()
    assert page.locator("#report-figures img").first.evaluate("i => i.naturalWidth") > 100
    assert page.locator("#report-download").is_visible()
    shot(page, "experiment-report")
    assert page.js_errors == []


def test_models_page_rolls_an_alias_back_and_draws_a_version_lineage(
    toy: Any,  # noqa: F811  (the fixture imported above)
    start_server,
    tokens: TokenStore,
    open_page,
) -> None:
    from crucible_registry import Registry
    from test_dashboard_models import train_toy

    train_toy(toy, "run-a")
    with Registry() as reg:
        reg.register("run-a", name="bigram", checkpoint="4")
        reg.register("run-a", name="bigram", checkpoint="8")
        reg.set_alias("bigram", "prod", 1, reason="first")
        reg.set_alias("bigram", "prod", 2, reason="better")
    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=0)
    page = open_page(f"{srv.url}/models", token=tok)
    model = page.get_by_role("region", name="Model bigram")
    alias = model.locator("p[data-alias=prod]")
    alias.filter(has_text="→ v2").wait_for()
    assert "better" in model.locator("ol").inner_text()
    page.once("dialog", lambda d: d.accept())
    model.get_by_role("button", name="Roll back prod").click()
    alias.filter(has_text="→ v1").wait_for()
    with page.expect_navigation():
        page.get_by_role("link", name="Lineage of bigram v2").click()
    svg = page.locator("#lineage svg")
    svg.wait_for()
    assert (svg.locator("title").first.text_content() or "").startswith("Lineage of bigram/2")
    assert svg.locator("rect").count() >= 3
    assert svg.locator('a[href="/runs/run-a"]').count() == 1  # the run it came from, linked
    assert page.js_errors == []


def test_pages_work_under_their_own_csp(start_server, http, tokens: TokenStore, open_page) -> None:
    """No page needs inline script, eval or a foreign origin: with the CSP enforced, the
    jobs list fills, the run page draws its curves and the stream ends, nothing refused."""
    tok, _ = tokens.create("acme", ["admin"])
    srv = start_server(tokens=tokens, workers=1)
    c = http(srv, tok)
    job_id = c.post("/v1/jobs", json=_curves(8, 0)).json()["job_id"]
    _wait_status(c, job_id, "succeeded")
    page = open_page(f"{srv.url}/", token=tok, csp=True)
    page.locator(f"tr[data-job='{job_id}'] td.status-succeeded").wait_for()
    page.goto(f"{srv.url}/runs/{job_id}")
    page.locator("#chart-loss .u-over").wait_for()
    page.locator("#stream-state", has_text="ended").wait_for()
    assert page.locator("#chart-loss").get_attribute("data-points") == "8"
    assert page.locator("#metric-charts .chart").count() == 1
    assert page.locator("#checkpoints tbody tr").all_inner_texts() == [
        "8\tstate\tfile:///checkpoints/8"
    ]
    assert page.js_errors == []

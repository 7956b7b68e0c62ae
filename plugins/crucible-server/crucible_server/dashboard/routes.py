"""The dashboard's routes: HTML shells, static files, and the ``/ui/api`` JSON they read.

See the package docstring for why pages are shells. Contract:

- ``GET /``, ``/runs/{id}``, ``/compare``, ``/experiments[/{id}]``,
  ``/models``, ``/models/{name}/{version}/lineage``, ``/lineage/{id}`` and
  ``/lineage?node=`` answer HTML with a strict Content-Security-Policy
  (scripts and styles from this origin only, no inline script), so a name that
  slips past escaping still cannot run.
- ``/runs/{id}`` answers 404 (an HTML page with a link back) when no tenant
  has that job and the server is open (no token store). With tokens the shell
  is the same for every id (the page learns "not found" from the API, which
  says 404 for another tenant's job too), so the HTML tells nothing about
  which ids exist.
- ``/ui/api/*`` needs the same bearer token and scopes as ``/v1``, and a job
  of another tenant is 404 there too. Models are not per tenant: reading them
  needs ``jobs:read``, rolling an alias back ``admin``; the lineage of an
  arbitrary node (a dataset links every tenant's runs) needs ``admin``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
from fastapi import Depends, FastAPI, Query
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir.work import Job
from crucible_core.records.paths import run_dir
from crucible_server.auth import Principal, RateLimiter
from crucible_server.dashboard.experiments import Reports
from crucible_server.filehash import Sha256Cache
from crucible_server.guards import owned_job, requires
from crucible_server.telemetry import ProgressCache, latest_progress

if TYPE_CHECKING:
    from jinja2 import Environment

    from crucible_core.queue.scheduler import Scheduler
    from crucible_server.tokens import TokenStore

__all__ = ["CSP", "REPORT_CSP", "mount_dashboard"]

_HERE: Final = Path(__file__).parent
#: Everything from this origin; nothing inline; no framing. uPlot sizes its
#: elements through the CSSOM (``el.style``), which CSP does not restrict.
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_encoder = msgspec.json.Encoder()
_MAX_COMPARE: Final = 5


def _templates() -> Environment:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        auto_reload=False,
    )


def job_summary(job: Job, progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row the jobs table shows: name, backend and progress next to the record."""
    payload: Any = job.payload if isinstance(job.payload, dict) else {}
    meta: Any = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
    backend: Any = payload.get("backend")
    if isinstance(backend, dict):
        backend = backend.get("name")  # pyright: ignore[reportUnknownMemberType]
    name = job.metadata.get("name") or meta.get("name") or ""
    return {
        "id": job.id,
        "name": str(name),
        "kind": job.kind,
        "status": job.status,
        "backend": backend if isinstance(backend, str) else None,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "attempts": job.attempts,
        "progress": latest_progress(job.id, window=8192) if progress is None else progress,
    }


def mount_dashboard(
    app: FastAPI,
    scheduler: Scheduler,
    *,
    tokens: TokenStore | None,
    limiter: RateLimiter | None,
) -> None:
    """Add the dashboard's pages, static files and ``/ui/api`` routes to ``app``."""
    env = _templates()
    hashes = Sha256Cache()
    progress = ProgressCache(window=8192)
    reports = Reports()
    app.mount("/ui/static", StaticFiles(directory=_HERE / "static"), name="dashboard-static")

    def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(
            page=template.removesuffix(".html"), open_mode=tokens is None, **context
        )
        return HTMLResponse(html, status, headers=_HEADERS)

    read = Depends(requires("jobs:read", tokens, limiter))
    art = Depends(requires("artifacts:read", tokens, limiter))
    admin = Depends(requires("admin", tokens, limiter))

    def owned(job_id: str, p: Principal) -> Job:
        return owned_job(scheduler, job_id, p, hint="the jobs page lists your jobs")

    def as_json(obj: Any) -> Response:
        return Response(_encoder.encode(obj), media_type="application/json")

    # -- pages ----------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def jobs_page() -> Any:  # pyright: ignore[reportUnusedFunction]
        return page("jobs.html", title="Jobs", nav="jobs", kind_filter="")

    @app.get("/experiments", include_in_schema=False)
    def experiments_page() -> Any:  # pyright: ignore[reportUnusedFunction]
        return page("experiments.html", title="Experiments", nav="experiments")

    @app.get("/experiments/{experiment}", include_in_schema=False)
    def experiment_page(experiment: str) -> Any:  # pyright: ignore[reportUnusedFunction]
        return page(
            "experiment.html",
            title=f"Experiment {experiment}",
            nav="experiments",
            experiment=experiment,
        )

    @app.get("/runs/{job_id}", include_in_schema=False)
    def run_page(job_id: str) -> Any:  # pyright: ignore[reportUnusedFunction]
        if tokens is None:
            try:
                scheduler.get(job_id)
            except NotFound:
                return page("notfound.html", 404, title="Not found", what=f"run {job_id}")
        return page("run.html", title=f"Run {job_id}", nav="jobs", job_id=job_id)

    @app.get("/compare", include_in_schema=False)
    def compare_page(runs: str = Query(default="", max_length=2000)) -> Any:  # pyright: ignore[reportUnusedFunction]
        ids = [r for r in runs.split(",") if r][:_MAX_COMPARE]
        return page("compare.html", title="Compare runs", nav="jobs", run_ids=ids)

    @app.get("/models", include_in_schema=False)
    def models_page() -> Any:  # pyright: ignore[reportUnusedFunction]
        return page("models.html", title="Models", nav="models", registry=_has_registry())

    @app.get("/lineage", include_in_schema=False)
    def node_lineage_page(node: str = Query(max_length=2000)) -> Any:  # pyright: ignore[reportUnusedFunction]
        return page("lineage.html", title="Lineage", nav="jobs", node_id=node, source="node")

    @app.get("/lineage/{node_id}", include_in_schema=False)
    def lineage_page(node_id: str) -> Any:  # pyright: ignore[reportUnusedFunction]
        return page("lineage.html", title="Lineage", nav="jobs", node_id=node_id, source="run")

    @app.get("/models/{name}/{version}/lineage", include_in_schema=False)
    def model_lineage_page(name: str, version: int) -> Any:  # pyright: ignore[reportUnusedFunction]
        return page(
            "lineage.html",
            title="Lineage",
            nav="models",
            node_id=f"{name}/{version}",
            source="model",
        )

    # -- JSON for the pages ----------------------------------------------------

    @app.get("/ui/api/whoami", include_in_schema=False)
    def whoami(p: Principal = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """The caller's tenant and scopes, so the page hides what the token may not do."""
        return as_json({"tenant": p.tenant_id, "scopes": sorted(p.scopes), "open": tokens is None})

    @app.get("/ui/api/jobs", include_in_schema=False)
    def jobs(  # pyright: ignore[reportUnusedFunction]
        p: Principal = read,
        status: str | None = Query(default=None, max_length=40),
        kind: str | None = Query(default=None, max_length=40),
        limit: int = Query(default=200, ge=1, le=500),
    ) -> Any:
        """The caller's newest jobs (newest first) with name, backend and progress."""
        found = scheduler.list(status=status or None, kind=kind or None, tenant_id=p.tenant_id)
        return as_json(
            {"items": [job_summary(j, progress.of(j.id)) for j in reversed(found[-limit:])]}
        )

    @app.get("/ui/api/experiments", include_in_schema=False)
    def experiments(p: Principal = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """The caller's grid experiments (crucible-harness cells grouped by experiment)."""
        from crucible_server.dashboard.experiments import cell_jobs, experiment_list

        return as_json({"items": experiment_list(cell_jobs(scheduler, p.tenant_id))})

    @app.get("/ui/api/experiments/{experiment}", include_in_schema=False)
    def experiment(experiment: str, p: Principal = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """One experiment's cells: overrides, seed, status, metrics of finished ones."""
        from crucible_server.dashboard.experiments import cell_jobs, experiment_cells

        return as_json(experiment_cells(cell_jobs(scheduler, p.tenant_id), experiment))

    @app.get("/ui/api/experiments/{experiment}/report", include_in_schema=False)
    def experiment_report(experiment: str, p: Principal = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """The harness report's opening lines and tables (quality targets among them)."""
        from crucible_server.dashboard.experiments import cell_jobs

        return as_json(reports.tables(scheduler, cell_jobs(scheduler, p.tenant_id), experiment))

    @app.get("/ui/api/experiments/{experiment}/report.html", include_in_schema=False)
    def experiment_report_html(experiment: str, p: Principal = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """The harness's self-contained HTML report, as ``crucible experiment report``
        writes it, under a CSP of its own: no script, no fetch, its inline style and
        PNG data URIs only, sandboxed, and a download rather than a page of this origin."""
        from crucible_server.dashboard.experiments import cell_jobs

        page = reports.html(scheduler, cell_jobs(scheduler, p.tenant_id), experiment)
        return HTMLResponse(page, headers=_report_headers(experiment))

    @app.get("/ui/api/jobs/{job_id}/artifacts", include_in_schema=False)
    def artifacts(job_id: str, p: Principal = art) -> Any:  # pyright: ignore[reportUnusedFunction]
        """The run directory's files with size and sha256 (dot files are internal)."""
        owned(job_id, p)
        root = run_dir(job_id)
        items: list[dict[str, Any]] = []
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if path.is_file() and not path.is_symlink():
                    items.append(
                        {
                            "path": rel.as_posix(),
                            "size": path.stat().st_size,
                            "sha256": hashes.of(path),
                            "url": f"/v1/jobs/{job_id}/artifacts/{rel.as_posix()}",
                        }
                    )
        return as_json({"items": items})

    @app.get("/ui/api/diff", include_in_schema=False)
    def diff(  # pyright: ignore[reportUnusedFunction]
        p: Principal = read, runs: str = Query(max_length=2000)
    ) -> Any:
        """``crucible runs diff`` of the first run against each other one (2-5 runs)."""
        from crucible_core.cli.runs_cmd import diff_records
        from crucible_core.records.artifacts import read_manifest

        ids = [r for r in runs.split(",") if r]
        if not 2 <= len(ids) <= _MAX_COMPARE:
            raise ConfigError(
                f"runs: compare 2 to {_MAX_COMPARE} runs, not {len(ids)}",
                hint="pass runs=a,b[,c...]",
            )
        manifests: list[dict[str, Any]] = []
        for job_id in ids:
            owned(job_id, p)
            try:
                manifests.append(read_manifest(run_dir(job_id)))
            except NotFound:
                manifests.append({})  # not started yet: every key differs
        base = manifests[0]
        return as_json(
            {
                "base": ids[0],
                "diffs": [
                    {"run": job_id, "changes": diff_records(base, m)}
                    for job_id, m in zip(ids[1:], manifests[1:], strict=True)
                ],
            }
        )

    @app.get("/ui/api/models", include_in_schema=False)
    async def models(p: Principal = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """Every registered model: versions, aliases with their history, gates and evidence."""
        from crucible_server.dashboard.models import describe_models

        return as_json(await run_in_threadpool(describe_models))

    @app.get("/ui/api/models/{name}/versions/{version}/lineage", include_in_schema=False)
    async def model_lineage(name: str, version: int, p: Principal = read) -> Any:  # pyright: ignore[reportUnusedFunction]
        """The lineage trees of one registered version (the registry's library API)."""
        from crucible_server.dashboard.models import version_lineage

        return as_json(await run_in_threadpool(version_lineage, name, version))

    @app.get("/ui/api/lineage", include_in_schema=False)
    def node_lineage(node: str = Query(max_length=2000), p: Principal = admin) -> Any:  # pyright: ignore[reportUnusedFunction]
        """Lineage of any node (a dataset, an artifact...): admin only, since such a node
        links runs of every tenant."""
        from crucible_core.records.lineage import LineageRecorder

        with LineageRecorder(scheduler.path) as rec:
            found = rec.resolve(node)
            return as_json(
                {
                    "ancestors": rec.ancestors(found).to_dict(),
                    "descendants": rec.descendants(found).to_dict(),
                }
            )

    @app.post("/ui/api/models/{name}/aliases/{alias}/rollback", include_in_schema=False)
    async def rollback(name: str, alias: str, p: Principal = admin) -> Any:  # pyright: ignore[reportUnusedFunction]
        """Undo the newest move of ``alias`` (admin tokens only: models are not per tenant)."""
        from crucible_server.dashboard.models import rollback_alias

        return as_json(await run_in_threadpool(rollback_alias, name, alias, p.token_id))


#: The policy of a served experiment report (its own, not the pages'): it is never
#: a page of this origin that could run anything or reach the API.
REPORT_CSP: Final = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'; sandbox"
)


def _report_headers(experiment: str) -> dict[str, str]:
    from urllib.parse import quote

    name = quote(f"{experiment}-report.html", safe="")
    return {
        **_HEADERS,
        "Content-Security-Policy": REPORT_CSP,
        "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
    }


def _has_registry() -> bool:
    import importlib.util

    return importlib.util.find_spec("crucible_registry") is not None

"""The dashboard's routes: pages under ``/ui`` and the JSON they poll under ``/ui/api``.

Every route is scoped to the viewer (`access.Viewer`): another tenant's job is not found (404), never
forbidden, so its id tells nothing. The `Gate` lets ``/ui`` through without a signature; the check is
here, by HTTP Basic (or none in development mode).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from bulkinfer.api.bedrock.outputs import OutputFiles, job_outputs, output_uri
from bulkinfer.api.ui import views
from bulkinfer.api.ui.access import REALM, Viewer, from_our_page, signed_in
from bulkinfer.api.ui.history import Throughput
from bulkinfer.domain.job import SERVICE_ENDED, JobStatus
from bulkinfer.domain.tenant import NotGranted, Tenants
from bulkinfer.engine.job import JOB_ID_PATTERN
from bulkinfer.errors import BulkinferError
from bulkinfer.services.batch import BatchService, JobConflict, JobNotFound
from bulkinfer.store.batch_jobs import BatchJob, JobFilter

PREFIX = "/ui"
PAGE_SIZE = 50
MAX_MODEL_NAME = 2048
"""Longest model name a filter may hold (as the job store keeps them)."""
STATIC = Path(__file__).parent / "static"
router = APIRouter(prefix=PREFIX, include_in_schema=False)
TEMPLATES = Environment(
    loader=PackageLoader("bulkinfer.api.ui", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)


class Refused(BulkinferError):
    """A dashboard request answered with an error page (or JSON, under ``/ui/api``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def viewer(request: Request) -> Viewer:
    tenants: Tenants = request.app.state.tenants
    found = signed_in(tenants, request.headers.get("authorization", ""))
    if found is None:
        raise Refused(401, "sign in with your access key id and secret", {"WWW-Authenticate": REALM})
    return found


ViewerDep = Annotated[Viewer, Depends(viewer)]


def _batch(request: Request) -> BatchService:
    batch: BatchService = request.app.state.batch
    return batch


def _history(request: Request) -> Throughput:
    history: Throughput = request.app.state.ui_history
    return history


def _job(request: Request, who: Viewer, job_id: str) -> BatchJob:
    try:
        if not JOB_ID_PATTERN.fullmatch(job_id):  # (nor is a NUL byte sent on to the database)
            raise JobNotFound(job_id)
        return _batch(request).get_any(job_id, who.name)
    except JobNotFound:
        raise Refused(404, f"no job {job_id[:100]}") from None


def _page(name: str, who: Viewer, **context: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(name).render(viewer=who.name, **context)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


Status = Annotated[str | None, Query(max_length=40)]
Model = Annotated[str | None, Query(max_length=200)]
After = Annotated[str | None, Query(max_length=64)]


@dataclass(frozen=True, slots=True)
class Wanted:
    """The jobs page's filters, kept in its links."""

    status: str
    model: str
    after: str


def wanted(status: Status = None, model: Model = None, after: After = None) -> Wanted:
    return Wanted(status or "", model or "", after or "")


WantedDep = Annotated[Wanted, Depends(wanted)]


def _listing(request: Request, who: Viewer, query: Wanted) -> dict[str, Any]:
    status = JobStatus(query.status) if query.status in set(JobStatus) else None
    if not query.model.isprintable() or len(query.model) > MAX_MODEL_NAME:  # no model is named so
        return {"jobs": [], "more": None}
    filters = JobFilter(tenant=who.name, status=status, model=query.model or None)
    try:
        if query.after and not JOB_ID_PATTERN.fullmatch(query.after):
            raise JobNotFound(query.after)
        jobs, more = _batch(request).page(filters, PAGE_SIZE, after=query.after or None)
    except JobNotFound:
        raise Refused(404, f"no job {query.after[:100]}") from None
    now, catalog, history = time.time(), _batch(request).catalog, _history(request)
    rows = [views.job_row(job, catalog, history, now) for job in jobs]
    return {"jobs": rows, "more": jobs[-1].job_id if more and jobs else None}


def _visible_models(request: Request, who: Viewer) -> list[str]:
    tenant = who.tenant
    return [s.name for s in _batch(request).catalog if tenant is None or tenant.may_use(s.name)]


@router.get("", response_class=HTMLResponse)
def jobs_page(request: Request, who: ViewerDep, query: WantedDep) -> HTMLResponse:
    statuses = [s.value for s in JobStatus]
    listing = _listing(request, who, query)
    return _page(
        "jobs.html", who, statuses=statuses, models=_visible_models(request, who), query=query, **listing
    )


@router.get("/api/jobs")
def jobs_json(request: Request, who: ViewerDep, query: WantedDep) -> JSONResponse:
    return JSONResponse(_listing(request, who, query))


def _detail(request: Request, who: Viewer, job_id: str) -> dict[str, Any]:
    job = _job(request, who, job_id)
    detail = views.job_detail(job, _batch(request).catalog, _history(request), time.time())
    detail["timeline"] = views.timeline(_batch(request).events(job.tenant, job.job_id))
    detail["provider_jobs"] = views.provider_jobs(_batch(request).provider_jobs(job.tenant, job.job_id))
    detail["outputs"], detail["error_samples"] = _ended_outputs(request, job)
    return detail


def _outputs(request: Request, job: BatchJob) -> OutputFiles | None:
    """The job's output files through its tenant's own grants; None until it ended, or where its tenant
    may no longer read them."""
    if job.status not in SERVICE_ENDED:
        return None
    tenant = request.app.state.tenants.get(job.tenant)
    try:
        tenant.check_read(output_uri(job), "output")
    except NotGranted:
        return None
    return job_outputs(request.app.state.settings, job, tenant.grants.may_read)


def _ended_outputs(request: Request, job: BatchJob) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    files = _outputs(request, job)
    if files is None:
        return [], []
    try:
        return views.output_links(job, files), views.error_samples(files)
    except OSError:  # the outputs' storage is away: the page still shows the job
        return [], []


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, who: ViewerDep, job_id: str) -> HTMLResponse:
    return _page("job.html", who, job=_detail(request, who, job_id))


@router.get("/api/jobs/{job_id}")
def job_json(request: Request, who: ViewerDep, job_id: str) -> JSONResponse:
    return JSONResponse(_detail(request, who, job_id))


@router.post("/api/jobs/{job_id}/stop")
def stop(request: Request, who: ViewerDep, job_id: str) -> JSONResponse:
    """Bedrock's StopModelInvocationJob, for the dashboard's Stop button (see `access.from_our_page`)."""
    if not from_our_page(request.headers, request.headers.get("host", "")):
        raise Refused(403, "a stop must come from the dashboard's own page")
    job = _job(request, who, job_id)
    try:
        _batch(request).stop(job.tenant, job.job_id)
    except JobConflict as exc:
        raise Refused(409, str(exc)) from None
    return JSONResponse({"stopped": job.job_id})


@router.get("/jobs/{job_id}/outputs/{name:path}")
def output(request: Request, who: ViewerDep, job_id: str, name: str) -> Response:
    """One output file of one of the viewer's ended jobs: only a name its listing holds."""
    job = _job(request, who, job_id)
    files = _outputs(request, job)
    if files is None or name not in files.sizes():
        raise Refused(404, f"job {job_id} has no output file {name!r}")
    # a download, never a page of ours: a record's text cannot run as the dashboard's
    download = {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name.rsplit('/', 1)[-1])}"}
    return StreamingResponse(files.read(name), media_type="text/plain; charset=utf-8", headers=download)


def _models(request: Request, who: Viewer) -> list[dict[str, Any]]:
    batch = _batch(request)
    visible = _visible_models(request, who)
    load: dict[str, tuple[int, int]] = {}
    for status, model, _, jobs, *_ in request.app.state.ui_store.tally().groups:
        running, queued = load.get(model, (0, 0))
        if status in (JobStatus.IN_PROGRESS.value, JobStatus.STOPPING.value):
            running += jobs
        elif status == JobStatus.SCHEDULED.value:
            queued += jobs
        load[model] = (running, queued)
    visible.sort(key=lambda name: (load.get(name, (0, 0)) == (0, 0), name))  # busy models first
    slots = request.app.state.settings.jobs_per_model
    return views.model_rows(batch.catalog, visible, load, slots, request.app.state.ui_limits)


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, who: ViewerDep) -> HTMLResponse:
    return _page("models.html", who, models=_models(request, who))


@router.get("/api/models")
def models_json(request: Request, who: ViewerDep) -> JSONResponse:
    return JSONResponse({"models": _models(request, who)})


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    if request.url.path.startswith(f"{PREFIX}/api/"):
        return JSONResponse({"message": str(exc)}, exc.status, headers=exc.headers)
    html = TEMPLATES.get_template("error.html").render(status=exc.status, message=str(exc), viewer=None)
    return HTMLResponse(html, exc.status, headers=exc.headers)


SAFE_HEADERS = {
    "Content-Security-Policy": (  # (inline style attributes draw the progress bars)
        "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
"""On every dashboard answer: no page elsewhere may frame it (a lured click on Stop), nothing is run
but its own script, and nothing is sniffed into another type."""


async def _safe_headers(request: Request, call_next: Any) -> Response:
    response: Response = await call_next(request)
    if request.url.path == PREFIX or request.url.path.startswith(f"{PREFIX}/"):
        response.headers.update(SAFE_HEADERS)
    return response


def install(app: FastAPI) -> None:
    """Add the dashboard to an app: its routes, its static files and its error pages."""
    app.include_router(router)
    app.middleware("http")(_safe_headers)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="ui-static")
    app.add_exception_handler(Refused, _refused)

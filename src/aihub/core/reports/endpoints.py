"""/api/billing (report, export, jobs) and /api/analytics (overview, jobs).

A report over a period longer than ``AIHUB_REPORT_SYNC_MAX_DAYS`` (or asked for with
``Prefer: respond-async``), and every all-users billing export, is answered ``202 Accepted``
with a job (``Location`` names it); the job's ``downloadUrl`` serves the result once ready.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Response

from aihub.core.rbac.deps import CurrentPrincipal
from aihub.core.rbac.service import Principal
from aihub.core.reports import jobs, schemas
from aihub.core.reports import service as reports
from aihub.core.usage import rollups
from aihub.core.users import service as users
from aihub.kit.deps import RequirePermission, RuntimeDep, TxDep, TxRoute
from aihub.kit.errors import ValidationFailed
from aihub.kit.inputs import Timestamp
from aihub.kit.jsonutil import dumps
from aihub.kit.openapi import errors
from aihub.kit.pagination import Paged, PageParams, page_params

billing_router = APIRouter(prefix="/api/billing", tags=["billing"], route_class=TxRoute)
analytics_router = APIRouter(prefix="/api/analytics", tags=["analytics"], route_class=TxRoute)

From = Annotated[Timestamp | None, Query(alias="from", description="Inclusive, RFC 3339")]
To = Annotated[Timestamp | None, Query(alias="to", description="Exclusive, RFC 3339")]
Format = Annotated[Literal["json", "csv"], Query(description="json, or csv (as an attachment)")]
Prefer = Annotated[
    str | None,
    Header(description="`respond-async` asks for a background job (202) even for a short report"),
]
JobId = Annotated[uuid.UUID, Path(description="The job's id")]
ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "model": schemas.ReportJobOut,
        "description": "A long report: a background job. Poll `Location`; download from `downloadUrl`.",
    }
}


def _window(start: dt.datetime | None, end: dt.datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise ValidationFailed("`to` must be after `from`", details=[{"field": "query.to", "message": "before from"}])


def _accepted(job: schemas.ReportJobOut, prefer_async: bool) -> Response:
    body = schemas.ReportJobOut.model_validate(job).model_dump(mode="json")
    headers = {"Location": body["url"], "Retry-After": "2"}
    if prefer_async:
        headers["Preference-Applied"] = "respond-async"
    return Response(dumps(body), status_code=202, media_type="application/json", headers=headers)


def _attachment(body: str | bytes, media_type: str, filename: str) -> Response:
    return Response(body, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@billing_router.get(
    "/report",
    response_model=schemas.BillingReport,
    responses={
        200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with format=csv"},
        **ACCEPTED,
        **errors(users.UserNotFound, jobs.ReportRequestContended),
    },
)
async def billing_report(
    tx: TxDep,
    runtime: RuntimeDep,
    caller: CurrentPrincipal,
    user_id: Annotated[uuid.UUID | None, Query(alias="userId")] = None,
    from_: From = None,
    to: To = None,
    format: Format = "json",
    prefer: Prefer = None,
) -> schemas.BillingReport | Response:
    """Opening balance, credits and debits by reason, usage by provider and model, closing balance.

    One's own report, or any user's with `billing:read`. `openingBalance + credits - debits ==
    closingBalance` for every period. A period longer than the sync limit (counted from the
    account's creation when `from` is earlier or absent) gives 202 with a job instead.
    """
    subject = user_id or caller.user_id
    if subject is None:
        raise ValidationFailed("userId is required for a service token", details=[{"field": "query.userId"}])
    if str(subject) != caller.id:
        caller.require("billing:read")
    _window(from_, to)
    user = await users.get_user(tx, subject)  # 404 USER_NOT_FOUND before any job is made
    prefer_async = jobs.wants_async(prefer)
    if prefer_async or jobs.too_long(reports.span_seconds(from_, to, user.created_at), runtime):
        job = await jobs.submit(tx, runtime, caller, "billing", format, user_id=subject, start=from_, end=to)
        return _accepted(job, prefer_async)
    report = await reports.billing_report(tx, subject, from_, to)
    if format == "csv":
        name = reports.filename(f"billing-{subject}", from_, to, "csv")
        return _attachment(reports.report_csv(report), "text/csv; charset=utf-8", name)
    return report


@billing_router.get(
    "/export",
    status_code=202,
    response_model=schemas.ReportJobOut,
    responses={**ACCEPTED, **errors(jobs.ReportRequestContended)},
)
async def billing_export(
    tx: TxDep,
    runtime: RuntimeDep,
    caller: Annotated[Principal, RequirePermission("billing:read")],
    from_: From = None,
    to: To = None,
    format: Format = "json",
) -> Response:
    """Every user's billing for a period (balances, credits and debits, usage): always a job.

    The result is a `BillingExport` as JSON, or CSV with one line per user.
    """
    _window(from_, to)
    job = await jobs.submit(tx, runtime, caller, "billing_export", format, start=from_, end=to)
    return _accepted(job, False)


@analytics_router.get(
    "/overview",
    response_model=schemas.Overview,
    responses={
        200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with format=csv"},
        **ACCEPTED,
        **errors(jobs.ReportRequestContended),
    },
)
async def analytics_overview(
    tx: TxDep,
    runtime: RuntimeDep,
    caller: Annotated[Principal, RequirePermission("analytics:read")],
    from_: From = None,
    to: To = None,
    format: Format = "json",
    prefer: Prefer = None,
) -> schemas.Overview | Response:
    """Totals, active users, top users, by provider, by model and a daily series (UTC days).

    A period longer than the sync limit (counted from the first usage event when `from` is
    earlier or absent) gives 202 with a job instead.
    """
    _window(from_, to)
    prefer_async = jobs.wants_async(prefer)
    if prefer_async or jobs.too_long(
        reports.span_seconds(from_, to, await rollups.earliest_event(tx.session)), runtime
    ):
        job = await jobs.submit(tx, runtime, caller, "overview", format, start=from_, end=to)
        return _accepted(job, prefer_async)
    overview = await reports.overview(tx, from_, to)
    if format == "csv":
        name = reports.filename("analytics-overview", from_, to, "csv")
        return _attachment(reports.overview_csv(overview), "text/csv; charset=utf-8", name)
    return overview


def _job_routes(router: APIRouter, family: str) -> None:
    """The same three job endpoints under /api/billing/jobs and /api/analytics/jobs."""

    @router.get("/jobs", response_model=schemas.ReportJobPage, name=f"{family}_jobs")
    async def list_jobs(
        tx: TxDep, caller: CurrentPrincipal, page: Annotated[PageParams, Depends(page_params)]
    ) -> Paged[schemas.ReportJobOut]:
        """The caller's own report jobs, newest first (finished ones until they expire)."""
        return await jobs.list_own(tx, caller, family, page)

    @router.get(
        "/jobs/{job_id}",
        response_model=schemas.ReportJobOut,
        name=f"{family}_job",
        responses=errors(jobs.ReportJobNotFound),
    )
    async def read_job(job_id: JobId, tx: TxDep, caller: CurrentPrincipal) -> schemas.ReportJobOut:
        """A report job: `queued`, `running`, `succeeded` (with `downloadUrl`) or `failed` (with
        `error.code`). 404 `REPORT_JOB_NOT_FOUND` for someone else's job or an expired one."""
        return jobs.job_state(await jobs.visible(tx, caller, job_id, family))

    @router.get(
        "/jobs/{job_id}/download",
        name=f"{family}_job_download",
        response_class=Response,
        responses={
            200: {"content": {"application/json": {}, "text/csv": {}}, "description": "The report, as an attachment"},
            **errors(jobs.ReportJobNotFound, jobs.ReportNotReady, jobs.ReportFailed),
        },
    )
    async def download_job(job_id: JobId, tx: TxDep, caller: CurrentPrincipal) -> Response:
        """The finished report in the requested format. 409 `REPORT_NOT_READY` (with `Retry-After`)
        while it runs, 409 `REPORT_FAILED` when it failed."""
        result = await jobs.download(tx, caller, job_id, family)
        return _attachment(result.body, result.media_type, result.filename)


_job_routes(billing_router, "billing")
_job_routes(analytics_router, "analytics")

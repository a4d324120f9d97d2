"""Long reports as background jobs: submitted by a request, run on the job queue, downloaded later.

Life of a job: ``queued`` (row committed, then the message is sent: a rolled-back request
sends nothing) -> ``running`` (one conditional UPDATE claims it, so a message delivered twice
runs once) -> ``succeeded`` (the whole result and the status in one UPDATE) or ``failed``
(an error code, never a result: a CHECK constraint forbids a result on any other status).
The result lives in the database, so any core instance serves the download. A finished job
is kept ``AIHUB_REPORT_RETENTION_SECONDS``, then it is gone (404), whether or not the sweep
has deleted the row yet. The sweep also fails jobs whose worker vanished.

Who sees a job: its requester, and whoever holds the permission that reads that data for
anyone (``billing:read`` for billing reports and exports, ``analytics:read`` for the
overview). Everyone else gets 404, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from aihub.core.audit import service as audit
from aihub.core.rbac.service import Principal
from aihub.core.reports import repository as repo
from aihub.core.reports import schemas
from aihub.core.reports import service as reports
from aihub.kit.db import Tx, as_utc, utcnow
from aihub.kit.errors import AppError, Conflict, NotFound, register_code
from aihub.kit.jobs import Periodic, job, jobs_of
from aihub.kit.jsonutil import canonical
from aihub.kit.pagination import Paged, PageParams, page_of
from aihub.kit.runtime import Runtime
from aihub.kit.schemas import ApiModel
from aihub.models import ReportJob

log = structlog.get_logger("aihub.reports")
RUN_JOB = "reports.run"
SWEEP_JOB = "reports.sweep"
# The permission that lets a caller read a kind of report about anyone (and so its jobs).
PERMISSION = {"billing": "billing:read", "billing_export": "billing:read", "overview": "analytics:read"}
# Jobs are served under the prefix of the report that made them (the gateway routes both).
FAMILY = {"billing": "billing", "billing_export": "billing", "overview": "analytics"}
MEDIA = {"json": "application/json", "csv": "text/csv; charset=utf-8"}
# A running job whose worker vanished is failed this long after its timeout.
INTERRUPT_GRACE = dt.timedelta(seconds=60)


class ReportJobNotFound(NotFound):
    code, message = "REPORT_JOB_NOT_FOUND", "No such report job"


class ReportNotReady(Conflict):
    code, message = "REPORT_NOT_READY", "The report is not ready yet; poll the job"


class ReportFailed(Conflict):
    code, message = "REPORT_FAILED", "The report job failed; request the report again"


# Codes a failed job reports in its ``error.code`` (the job itself answers 200). A job that
# failed on a client error (e.g. the user was deleted meanwhile) carries that error's code.
def _job_code(code: str, message: str) -> str:
    return register_code(code, None, message, where=__name__)


QUEUE_UNAVAILABLE = _job_code("REPORT_QUEUE_UNAVAILABLE", "The job queue was unavailable; request again")
TIMED_OUT = _job_code("REPORT_TIMEOUT", "The report took longer than the job timeout")
CRASHED = _job_code("REPORT_FAILED", "The report could not be computed")
INTERRUPTED = _job_code("REPORT_INTERRUPTED", "The worker running this report stopped; request the report again")
NOT_STARTED = _job_code("REPORT_NOT_STARTED", "No worker picked this report up in time; request the report again")


def wants_async(prefer: str | None) -> bool:
    """RFC 7240 ``Prefer: respond-async``: the client asks for a job even for a short report."""
    if not prefer:
        return False
    return any(token.strip().lower() == "respond-async" for token in prefer.replace(";", ",").split(","))


def too_long(seconds: float, runtime: Runtime) -> bool:
    return seconds > runtime.settings.report_sync_max_days * 86_400


def _params(user_id: uuid.UUID | None, start: dt.datetime | None, end: dt.datetime | None) -> repo.ReportParams:
    def iso(value: dt.datetime | None) -> str | None:
        moment = as_utc(value)
        return moment.isoformat() if moment else None

    return repo.ReportParams(str(user_id) if user_id else None, iso(start), iso(end))


def job_state(job: ReportJob) -> schemas.ReportJobOut:
    """A report job as its requester polls it: where to poll, and where to download once done."""
    url = f"/api/{FAMILY[job.kind]}/jobs/{job.id}"
    return schemas.ReportJobOut.read(
        job,
        error=schemas.JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        url=url,
        download_url=f"{url}/download" if job.status == "succeeded" else None,
    )


# ---------------------------------------------------------------- requests


class ReportRequestContended(Conflict):
    code, message = "REPORT_REQUEST_CONTENDED", "Identical report requests keep colliding; retry shortly"


def _new_job(kind: str, fmt: str, params: dict[str, str | None], params_hash: str, requested_by: str) -> ReportJob:
    return ReportJob(
        id=uuid.uuid4(),
        kind=kind,
        format=fmt,
        params=params,
        params_hash=params_hash,
        requested_by=requested_by,
        status="queued",
        created_at=utcnow(),
    )


async def submit(
    tx: Tx,
    runtime: Runtime,
    caller: Principal,
    kind: str,
    fmt: str,
    *,
    user_id: uuid.UUID | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> schemas.ReportJobOut:
    """Queue a report (the caller's permission was checked by the endpoint).

    The same request while an identical one of this caller is still queued or running returns
    that job: polling clients that repeat the request do not pile up work.
    """
    params = _params(user_id, start, end).document()
    params_hash = hashlib.sha256(canonical({"kind": kind, "format": fmt, "params": params})).hexdigest()
    # The partial unique index allows one live job per caller and request. An identical request
    # that inserts first makes our insert wait for its commit and fail: we then answer with its
    # job (read again), so concurrent duplicates share one job.
    for _ in range(3):
        existing = await repo.in_flight(tx.session, caller.id, params_hash)
        if existing is not None:
            return job_state(existing)
        report_job = _new_job(kind, fmt, params, params_hash, caller.id)
        try:
            async with tx.session.begin_nested():
                tx.session.add(report_job)
            break
        except IntegrityError:
            continue  # the other job may also have finished in between: look again
    else:
        raise ReportRequestContended
    audit.record(tx, "report.requested", "report_job", report_job.id, after={"kind": kind, "format": fmt, **params})

    async def send() -> None:
        await _enqueue(runtime, report_job.id)

    tx.after_commit(send)
    return job_state(report_job)


async def _enqueue(runtime: Runtime, job_id: uuid.UUID) -> None:
    try:
        await jobs_of(runtime).enqueue(RUN_JOB, {"jobId": str(job_id)})
    except Exception:  # the queue is down: the job says so at once instead of waiting forever
        log.exception("reports.enqueue_failed", job_id=str(job_id))
        await _fail(runtime, job_id, QUEUE_UNAVAILABLE, "The job queue was unavailable; request again")


def _may_read(caller: Principal, report_job: ReportJob) -> bool:
    if caller.can(PERMISSION[report_job.kind]):  # may read this data about anyone
        return True
    own_report = report_job.kind == "billing" and repo.ReportParams.of(report_job.params).user_id == caller.id
    return own_report and report_job.requested_by == caller.id


async def visible(tx: Tx, caller: Principal, job_id: uuid.UUID, family: str) -> ReportJob:
    report_job = await repo.get_job(tx.session, job_id, utcnow())
    if report_job is None or FAMILY[report_job.kind] != family or not _may_read(caller, report_job):
        raise ReportJobNotFound
    return report_job


async def list_own(tx: Tx, caller: Principal, family: str, page: PageParams) -> Paged[schemas.ReportJobOut]:
    kinds = [kind for kind, prefix in FAMILY.items() if prefix == family]
    rows = await repo.fetch_jobs(tx.session, repo.own_jobs(page, caller.id, kinds, utcnow()))
    items, cursor = page_of(rows, page, lambda j: (j.created_at, j.id))
    return Paged([job_state(j) for j in items], cursor)


@dataclass(frozen=True, slots=True)
class Download:
    body: bytes
    media_type: str
    filename: str


async def download(tx: Tx, caller: Principal, job_id: uuid.UUID, family: str) -> Download:
    report_job = await visible(tx, caller, job_id, family)
    if report_job.status == "failed":
        raise ReportFailed(details={"code": report_job.error_code, "message": report_job.error_message})
    if report_job.status != "succeeded":
        raise ReportNotReady(details={"status": report_job.status}, headers={"Retry-After": "2"})
    body = await repo.result_of(tx.session, report_job.id)
    assert body is not None and report_job.content_type and report_job.filename  # CHECK ck_report_jobs_result
    return Download(body, report_job.content_type, report_job.filename)


# ---------------------------------------------------------------- the worker's side


_RENDER: dict[str, tuple[type[ApiModel], Callable[[Any], str]]] = {
    "billing": (schemas.BillingReport, reports.report_csv),
    "billing_export": (schemas.BillingExport, reports.export_csv),
    "overview": (schemas.Overview, reports.overview_csv),
}


async def _compute(runtime: Runtime, kind: str, fmt: str, params: repo.ReportParams) -> tuple[bytes, str]:
    """Render the report in one read-only snapshot, so a balance and its movements always agree.

    JSON is byte for byte what the direct endpoint answers; returns (body, file name stem).
    """
    start, end = params.window()
    tx = runtime.tx()
    try:
        if not runtime.settings.is_sqlite:  # SQLite's transaction is serialisable already
            await tx.session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        data: schemas.BillingReport | schemas.BillingExport | schemas.Overview
        if kind == "billing":
            assert params.user_id is not None  # a billing report is of one user
            data = await reports.billing_report(tx, uuid.UUID(params.user_id), start, end)
            stem = f"billing-{params.user_id}"
        elif kind == "billing_export":
            data, stem = await reports.billing_export(tx, start, end), "billing-export"
        else:
            data, stem = await reports.overview(tx, start, end), "analytics-overview"
    finally:
        await tx.close()
    model, to_csv = _RENDER[kind]
    body = to_csv(data) if fmt == "csv" else model.model_validate(data).model_dump_json()
    return body.encode(), stem


async def _fail(runtime: Runtime, job_id: uuid.UUID, code: str, message: str) -> None:
    now = utcnow()
    expires = now + dt.timedelta(seconds=runtime.settings.report_retention_seconds)
    tx = runtime.tx()
    try:
        await repo.fail(tx.session, job_id, code=code, message=message, now=now, expires_at=expires)
        await tx.commit()
    finally:
        await tx.close()
    log.warning("reports.job_failed", job_id=str(job_id), code=code)


async def run(runtime: Runtime, job_id: uuid.UUID) -> bool:
    """Run one job if it is still queued. Returns whether this call ran it."""
    tx = runtime.tx()
    try:
        claimed = await repo.claim(tx.session, job_id, utcnow())
        await tx.commit()
    finally:
        await tx.close()
    if claimed is None:  # already taken by another delivery, swept, or gone
        return False
    kind, fmt, params = claimed.kind, claimed.format, claimed.params
    try:
        async with asyncio.timeout(runtime.settings.report_job_timeout_seconds):
            body, stem = await _compute(runtime, kind, fmt, params)
    except TimeoutError:
        await _fail(runtime, job_id, TIMED_OUT, "The report took longer than the job timeout")
        return True
    except AppError as exc:  # e.g. the user was deleted meanwhile: the client's answer, not a crash
        await _fail(runtime, job_id, exc.code, exc.message)
        return True
    except Exception:
        log.exception("reports.job_crashed", job_id=str(job_id), kind=kind)
        await _fail(runtime, job_id, CRASHED, "The report could not be computed")
        return True
    now = utcnow()
    start, end = params.window()
    tx = runtime.tx()
    try:
        done = await repo.finish(
            tx.session,
            job_id,
            result=body,
            content_type=MEDIA[fmt],
            filename=reports.filename(stem, start, end, fmt),
            now=now,
            expires_at=now + dt.timedelta(seconds=runtime.settings.report_retention_seconds),
        )
        await tx.commit()
    finally:
        await tx.close()
    if not done:  # the sweep declared it interrupted meanwhile; its failure stands
        log.warning("reports.finished_too_late", job_id=str(job_id))
    return True


@dataclass(frozen=True, slots=True)
class Swept:
    """What one sweep did: jobs deleted, and jobs failed as interrupted or never started."""

    purged: int
    interrupted: int
    unstarted: int


async def sweep(runtime: Runtime, now: dt.datetime | None = None) -> Swept:
    """Delete expired jobs; fail jobs whose worker vanished. Conditional statements only, so
    every instance may run it at once."""
    now = now or utcnow()
    settings = runtime.settings
    timeout = dt.timedelta(seconds=settings.report_job_timeout_seconds)
    expires = now + dt.timedelta(seconds=settings.report_retention_seconds)
    tx = runtime.tx()
    try:
        purged = await repo.purge_expired(tx.session, now)
        interrupted = await repo.fail_stale(
            tx.session,
            status="running",
            before=now - timeout - INTERRUPT_GRACE,
            code=INTERRUPTED,
            message="The worker running this report stopped; request the report again",
            now=now,
            expires_at=expires,
        )
        # A queued job is only lost when its message was (an in-process queue in a stopped process).
        unstarted = await repo.fail_stale(
            tx.session,
            status="queued",
            before=now - 2 * timeout,
            code=NOT_STARTED,
            message="No worker picked this report up in time; request the report again",
            now=now,
            expires_at=expires,
        )
        await tx.commit()
    finally:
        await tx.close()
    if purged or interrupted or unstarted:
        log.info("reports.swept", purged=purged, interrupted=interrupted, unstarted=unstarted)
    return Swept(purged, interrupted, unstarted)


@job(RUN_JOB)
async def run_report(runtime: Runtime, payload: dict[str, Any]) -> None:
    await run(runtime, uuid.UUID(str(payload["jobId"])))


@job(SWEEP_JOB)
async def sweep_jobs(runtime: Runtime, payload: dict[str, Any]) -> None:
    await sweep(runtime)


def periodic(runtime: Runtime) -> list[Periodic]:
    return [Periodic(SWEEP_JOB, runtime.settings.report_sweep_interval_seconds)]

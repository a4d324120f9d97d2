"""Long reports as background jobs: 202 + Location, polling, download, permissions, failure, expiry."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from aihub.core.reports import jobs as report_jobs
from aihub.core.reports import repository as report_repo
from aihub.kit.db import utcnow
from aihub.kit.jobs import Jobs, jobs_of
from aihub.kit.runtime import Runtime
from aihub.models import ReportJob, UsageEvent, User
from tests.conftest import Caller, _core_app, create_user
from tests.core.test_reports import generate
from tests.core.test_users import assert_error


@pytest.fixture
async def worker(runtime: Runtime) -> Jobs:
    """This process consumes the job queue (the Redis stream, or the in-process queue)."""
    queue = jobs_of(runtime)
    await queue.start()
    return queue


async def other_instance(rt: Runtime, **settings: Any) -> tuple[Runtime, httpx.AsyncClient]:
    """A second core instance on the same database and store, with other settings."""
    second = Runtime.build(rt.settings.model_copy(update=settings))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=_core_app(second)), base_url="http://core2.test")
    return second, client


@pytest.fixture
async def unlimited(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """An instance that answers every report directly (to compare a job's result with)."""
    second, client = await other_instance(runtime, report_sync_max_days=36_000)
    yield client
    await client.aclose()
    await second.close()


async def age(rt: Runtime, user_id: str, days: int) -> None:
    """Make an account ``days`` old (a report's period counts from the account's creation)."""
    tx = rt.tx()
    try:
        when = utcnow() - dt.timedelta(days=days)
        await tx.session.execute(update(User).where(User.id == uuid.UUID(user_id)).values(created_at=when))
        await tx.commit()
    finally:
        await tx.close()


async def finished(client: httpx.AsyncClient, caller: Caller, url: str) -> dict[str, Any]:
    for _ in range(600):
        response = await client.get(url, headers=caller.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["status"] in ("queued", "running", "succeeded", "failed")
        if body["status"] in ("succeeded", "failed"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {url} did not finish")


def accepted(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["location"] == body["url"]
    assert body["status"] in ("queued", "running", "succeeded")
    assert body["downloadUrl"] is None or body["status"] == "succeeded"
    assert {"id", "kind", "format", "status", "params", "createdAt", "expiresAt", "error"} <= set(body)
    return body


async def test_long_billing_report_runs_as_a_job_and_downloads(
    client: httpx.AsyncClient, runtime: Runtime, worker: Jobs, user: Caller, unlimited: httpx.AsyncClient
) -> None:
    await generate(client, runtime, user, random.Random(21))
    await age(runtime, user.id, 90)
    since = (utcnow() - dt.timedelta(days=60)).replace(microsecond=0)
    params = {"from": since.isoformat()}
    short = await client.get(
        "/api/billing/report", headers=user.headers, params={"from": (utcnow() - dt.timedelta(days=20)).isoformat()}
    )
    assert short.status_code == 200 and "openingBalance" in short.json()

    job = accepted(await client.get("/api/billing/report", headers=user.headers, params=params))
    assert job["kind"] == "billing" and job["format"] == "json" and job["params"]["userId"] == user.id
    assert job["url"] == f"/api/billing/jobs/{job['id']}"
    done = await finished(client, user, job["url"])
    assert done["status"] == "succeeded" and done["error"] is None
    assert done["downloadUrl"] == f"{job['url']}/download" and done["resultBytes"] > 0
    download = await client.get(done["downloadUrl"], headers=user.headers)
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("application/json")
    today = utcnow().date().isoformat()
    expected_name = f"billing-{user.id}-{since.date().isoformat()}-{today}.json"
    assert download.headers["content-disposition"] == f'attachment; filename="{expected_name}"'
    direct = await unlimited.get("/api/billing/report", headers=user.headers, params=params)
    assert direct.status_code == 200
    assert download.json() == direct.json()
    report = download.json()
    assert report["openingBalance"] + report["credits"] - report["debits"] == report["closingBalance"]

    csv_job = accepted(
        await client.get("/api/billing/report", headers=user.headers, params={**params, "format": "csv"})
    )
    assert csv_job["id"] != job["id"] and csv_job["format"] == "csv"
    await finished(client, user, csv_job["url"])
    got = await client.get(f"{csv_job['url']}/download", headers=user.headers)
    assert got.headers["content-type"].startswith("text/csv")
    assert got.headers["content-disposition"].endswith('.csv"')
    rows = list(csv.reader(io.StringIO(got.text)))
    summary = {r[1]: int(r[2]) for r in rows if r and r[0] == "summary"}
    assert summary == {"opening_balance": report["openingBalance"], "closing_balance": report["closingBalance"]}
    usage = {(r[1], r[2]): int(r[6]) for r in rows if r and r[0] == "usage"}
    assert usage == {(u["provider"], u["model"]): u["credits"] for u in report["usage"]}

    listed = (await client.get("/api/billing/jobs", headers=user.headers)).json()
    assert [j["id"] for j in listed["items"]] == [csv_job["id"], job["id"]]


async def test_prefer_respond_async_gives_a_job_for_a_short_report(
    client: httpx.AsyncClient, runtime: Runtime, worker: Jobs, user: Caller
) -> None:
    response = await client.get("/api/billing/report", headers={**user.headers, "Prefer": "respond-async"})
    job = accepted(response)
    assert response.headers["preference-applied"] == "respond-async"
    assert (await finished(client, user, job["url"]))["status"] == "succeeded"


async def test_billing_export_of_all_users(
    client: httpx.AsyncClient, runtime: Runtime, worker: Jobs, admin: Caller, user: Caller, unlimited: httpx.AsyncClient
) -> None:
    others = [await create_user(runtime) for _ in range(2)]
    rng = random.Random(8)
    for caller in (user, *others):
        await generate(client, runtime, caller, rng)
    assert_error(await client.get("/api/billing/export", headers=user.headers), 403, "FORBIDDEN")
    start = (utcnow() - dt.timedelta(hours=1)).isoformat()
    job = accepted(await client.get("/api/billing/export", headers=admin.headers, params={"from": start}))
    assert job["kind"] == "billing_export" and job["url"].startswith("/api/billing/jobs/")
    assert (await finished(client, admin, job["url"]))["status"] == "succeeded"
    export = (await client.get(f"{job['url']}/download", headers=admin.headers)).json()
    by_user = {row["userId"]: row for row in export["users"]}
    assert set(by_user) == {user.id, *(o.id for o in others)}
    for caller in (user, *others):
        row = by_user[caller.id]
        assert row["openingBalance"] + row["credits"] - row["debits"] == row["closingBalance"]
        direct = (
            await unlimited.get(
                "/api/billing/report", headers=admin.headers, params={"userId": caller.id, "from": start}
            )
        ).json()
        assert {k: row[k] for k in row if k != "userId"} == {
            k: direct[k] for k in direct if k not in ("userId", "from", "to")
        }

    csv_job = accepted(
        await client.get("/api/billing/export", headers=admin.headers, params={"from": start, "format": "csv"})
    )
    await finished(client, admin, csv_job["url"])
    text = (await client.get(f"{csv_job['url']}/download", headers=admin.headers)).text
    lines = list(csv.DictReader(io.StringIO(text)))
    assert {r["user_id"] for r in lines} == set(by_user)
    for r in lines:
        row = by_user[r["user_id"]]
        assert int(r["closing_balance"]) == row["closingBalance"] and int(r["debits"]) == row["debits"]
        assert int(r["usage_credits"]) == sum(u["credits"] for u in row["usage"])


async def test_jobs_are_visible_to_their_owner_and_to_readers_of_that_data(
    client: httpx.AsyncClient, runtime: Runtime, worker: Jobs, admin: Caller, manager: Caller, user: Caller
) -> None:
    stranger = await create_user(runtime)
    mine = accepted(await client.get("/api/billing/report", headers={**user.headers, "Prefer": "respond-async"}))
    await finished(client, user, mine["url"])
    assert (await client.get(mine["url"], headers=manager.headers)).status_code == 200  # billing:read
    assert_error(await client.get(mine["url"], headers=stranger.headers), 404, "REPORT_JOB_NOT_FOUND")
    assert_error(await client.get(f"{mine['url']}/download", headers=stranger.headers), 404, "REPORT_JOB_NOT_FOUND")
    assert_error(
        await client.get(f"/api/analytics/jobs/{mine['id']}", headers=user.headers), 404, "REPORT_JOB_NOT_FOUND"
    )
    assert_error(
        await client.get(f"/api/billing/jobs/{uuid.uuid4()}", headers=admin.headers), 404, "REPORT_JOB_NOT_FOUND"
    )

    export = accepted(await client.get("/api/billing/export", headers=admin.headers))
    await finished(client, admin, export["url"])
    assert (await client.get(f"{export['url']}/download", headers=manager.headers)).status_code == 200
    assert_error(await client.get(export["url"], headers=user.headers), 404, "REPORT_JOB_NOT_FOUND")
    assert (await client.get("/api/billing/jobs", headers=stranger.headers)).json()["items"] == []
    assert [j["id"] for j in (await client.get("/api/billing/jobs", headers=user.headers)).json()["items"]] == [
        mine["id"]
    ]
    assert_error(await client.get("/api/billing/jobs"), 401, "UNAUTHORIZED")


async def test_long_overview_is_a_job_in_either_format(
    client: httpx.AsyncClient, runtime: Runtime, worker: Jobs, admin: Caller, user: Caller, unlimited: httpx.AsyncClient
) -> None:
    await generate(client, runtime, user, random.Random(4))
    tx = runtime.tx()
    await tx.session.execute(update(UsageEvent).values(created_at=utcnow() - dt.timedelta(days=45)))
    await tx.commit()
    await tx.close()
    job = accepted(await client.get("/api/analytics/overview", headers=admin.headers))
    assert job["kind"] == "overview" and job["url"] == f"/api/analytics/jobs/{job['id']}"
    assert_error(await client.get(job["url"], headers=user.headers), 404, "REPORT_JOB_NOT_FOUND")
    await finished(client, admin, job["url"])
    result = (await client.get(f"{job['url']}/download", headers=admin.headers)).json()
    assert result == (await unlimited.get("/api/analytics/overview", headers=admin.headers)).json()
    assert result["totals"]["requests"] == 40

    as_csv = accepted(await client.get("/api/analytics/overview", headers=admin.headers, params={"format": "csv"}))
    await finished(client, admin, as_csv["url"])
    rows = list(csv.reader(io.StringIO((await client.get(f"{as_csv['url']}/download", headers=admin.headers)).text)))
    totals = next(r for r in rows if r[0] == "totals")
    assert [int(x) for x in totals[2:]] == [
        result["totals"][k] for k in ("requests", "inputTokens", "outputTokens", "credits")
    ]
    assert sum(int(r[5]) for r in rows if r[0] == "day") == result["totals"]["credits"]

    direct = await client.get(
        "/api/analytics/overview", headers=admin.headers, params={"from": (utcnow() - dt.timedelta(days=1)).isoformat()}
    )
    assert direct.status_code == 200 and direct.json()["totals"]["requests"] == 0


async def test_failed_job_reports_its_code_and_keeps_no_result(runtime: Runtime, user: Caller) -> None:
    slow, client = await other_instance(runtime, report_job_timeout_seconds=1e-6)
    try:
        await jobs_of(slow).start()
        job = accepted(await client.get("/api/billing/report", headers={**user.headers, "Prefer": "respond-async"}))
        done = await finished(client, user, job["url"])
        assert done["status"] == "failed" and done["error"]["code"] == "REPORT_TIMEOUT"
        assert done["downloadUrl"] is None and done["resultBytes"] is None
        failed = assert_error(await client.get(f"{job['url']}/download", headers=user.headers), 409, "REPORT_FAILED")
        assert cast(dict[str, Any], failed["details"])["code"] == "REPORT_TIMEOUT"
    finally:
        await client.aclose()
        await slow.close()
    tx = runtime.tx()
    try:
        row = (await tx.session.execute(select(ReportJob.result).where(ReportJob.id == uuid.UUID(job["id"])))).one()
        assert row.result is None
        # The schema itself refuses a result on a job that did not succeed.
        with pytest.raises(IntegrityError):
            await tx.session.execute(
                update(ReportJob).where(ReportJob.id == uuid.UUID(job["id"])).values(result=b"half")
            )
    finally:
        await tx.close()


async def _job(rt: Runtime, status: str, **values: Any) -> uuid.UUID:
    tx = rt.tx()
    try:
        job_id = uuid.uuid4()
        tx.session.add(
            ReportJob(
                id=job_id,
                kind="overview",
                format="json",
                params={"userId": None, "from": None, "to": None},
                params_hash=uuid.uuid4().hex,
                requested_by="someone",
                status=status,
                **values,
            )
        )
        await tx.commit()
        return job_id
    finally:
        await tx.close()


async def _status(rt: Runtime, job_id: uuid.UUID) -> tuple[str, str | None] | None:
    tx = rt.tx()
    try:
        row = (
            await tx.session.execute(select(ReportJob.status, ReportJob.error_code).where(ReportJob.id == job_id))
        ).first()
        return (row.status, row.error_code) if row else None
    finally:
        await tx.close()


async def test_sweep_fails_abandoned_jobs_and_deletes_expired_ones(runtime: Runtime) -> None:
    now = utcnow()
    hour = dt.timedelta(hours=1)
    abandoned = await _job(runtime, "running", created_at=now - 2 * hour, started_at=now - 2 * hour)
    busy = await _job(runtime, "running", created_at=now, started_at=now)
    lost = await _job(runtime, "queued", created_at=now - 2 * hour)
    waiting = await _job(runtime, "queued", created_at=now)
    assert await report_jobs.sweep(runtime, now) == report_jobs.Swept(purged=0, interrupted=1, unstarted=1)
    assert await _status(runtime, abandoned) == ("failed", "REPORT_INTERRUPTED")
    assert await _status(runtime, lost) == ("failed", "REPORT_NOT_STARTED")
    assert await _status(runtime, busy) == ("running", None)
    assert await _status(runtime, waiting) == ("queued", None)

    # The vanished worker comes back and tries to store its result: the failure stands.
    tx = runtime.tx()
    stored = await report_repo.finish(
        tx.session, abandoned, result=b"{}", content_type="application/json", filename="x.json", now=now, expires_at=now
    )
    await tx.commit()
    await tx.close()
    assert stored is False and await _status(runtime, abandoned) == ("failed", "REPORT_INTERRUPTED")

    later = now + dt.timedelta(seconds=runtime.settings.report_retention_seconds + 1)
    swept = await report_jobs.sweep(runtime, later)
    assert swept.purged == 2
    assert await _status(runtime, abandoned) is None and await _status(runtime, lost) is None


async def test_expired_job_is_gone_before_the_sweep(
    client: httpx.AsyncClient, runtime: Runtime, worker: Jobs, user: Caller
) -> None:
    job = accepted(await client.get("/api/billing/report", headers={**user.headers, "Prefer": "respond-async"}))
    await finished(client, user, job["url"])
    tx = runtime.tx()
    await tx.session.execute(
        update(ReportJob)
        .where(ReportJob.id == uuid.UUID(job["id"]))
        .values(expires_at=utcnow() - dt.timedelta(seconds=1))
    )
    await tx.commit()
    await tx.close()
    assert_error(await client.get(job["url"], headers=user.headers), 404, "REPORT_JOB_NOT_FOUND")
    assert_error(await client.get(f"{job['url']}/download", headers=user.headers), 404, "REPORT_JOB_NOT_FOUND")


@pytest.mark.postgres
async def test_repeated_request_reuses_the_queued_job_and_a_job_runs_once(pg_runtime: Runtime) -> None:
    """No consumer here: the job stays queued until the worker's function runs it, three times at once."""
    rt = pg_runtime
    user = await create_user(rt)
    transport = httpx.ASGITransport(app=_core_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
        headers = {**user.headers, "Prefer": "respond-async"}
        first = accepted(await client.get("/api/billing/report", headers=headers))
        again = accepted(await client.get("/api/billing/report", headers=headers))
        assert again["id"] == first["id"] and again["status"] == "queued"
        assert_error(await client.get(f"{first['url']}/download", headers=user.headers), 409, "REPORT_NOT_READY")
        ran = await asyncio.gather(*(report_jobs.run(rt, uuid.UUID(first["id"])) for _ in range(3)))
        assert sorted(ran) == [False, False, True]
        done = (await client.get(first["url"], headers=user.headers)).json()
        assert done["status"] == "succeeded"
        other = accepted(await client.get("/api/billing/report", headers=headers))
        assert other["id"] != first["id"]  # a finished job is not reused: the data may have moved on


async def test_openapi_publishes_the_job_endpoints(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    for family in ("billing", "analytics"):
        for path in (
            f"/api/{family}/jobs",
            f"/api/{family}/jobs/{{job_id}}",
            f"/api/{family}/jobs/{{job_id}}/download",
        ):
            assert "get" in paths[path]
    for path in ("/api/billing/report", "/api/analytics/overview", "/api/billing/export"):
        assert "202" in paths[path]["get"]["responses"]
    job = schema["components"]["schemas"]["ReportJobOut"]["properties"]
    assert {"id", "status", "createdAt", "url", "downloadUrl", "error", "expiresAt"} <= set(job)


def test_export_csv_defuses_formula_cells() -> None:
    from aihub.core.reports.schemas import BillingExport, ExportRow
    from aihub.core.reports.service import export_csv

    def row(email: str) -> ExportRow:
        return ExportRow(
            user_id=uuid.uuid4(),
            email=email,
            opening_balance=0,
            credits=0,
            debits=0,
            closing_balance=0,
            by_reason=[],
            usage=[],
        )

    now = dt.datetime.now(dt.UTC)
    export = BillingExport(from_=None, to=None, generated_at=now, users=[row("=HYPERLINK(1)@x.io"), row("a@x.io")])
    lines = list(csv.DictReader(io.StringIO(export_csv(export))))
    assert [r["email"] for r in lines] == ["'=HYPERLINK(1)@x.io", "a@x.io"]


async def test_concurrent_identical_requests_share_one_job(pg_runtime: Runtime) -> None:
    """Twenty identical requests at once: one job (the partial unique index), every answer names it."""
    rt = pg_runtime
    user = await create_user(rt)
    transport = httpx.ASGITransport(app=_core_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
        headers = {**user.headers, "Prefer": "respond-async"}
        answers = await asyncio.gather(*(client.get("/api/billing/report", headers=headers) for _ in range(20)))
    ids = {accepted(answer)["id"] for answer in answers}
    assert len(ids) == 1
    tx = rt.tx()
    try:
        rows = (await tx.session.execute(select(ReportJob).where(ReportJob.requested_by == user.id))).scalars().all()
    finally:
        await tx.close()
    assert [str(row.id) for row in rows] == list(ids)


async def test_job_endpoints_refuse_bad_input_and_the_unauthorised(
    client: httpx.AsyncClient, admin: Caller, user: Caller
) -> None:
    for path in ("/api/billing/jobs/not-a-uuid", "/api/analytics/jobs/123/download"):
        assert_error(await client.get(path, headers=admin.headers), 404, "NOT_FOUND")
    assert_error(
        await client.get("/api/billing/jobs", headers=admin.headers, params={"limit": 0}), 422, "VALIDATION_ERROR"
    )
    window = {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
    assert_error(await client.get("/api/billing/export", headers=admin.headers, params=window), 422, "VALIDATION_ERROR")
    assert_error(
        await client.get("/api/billing/export", headers=admin.headers, params={"format": "xml"}),
        422,
        "VALIDATION_ERROR",
    )
    assert_error(await client.get("/api/billing/export", headers=user.headers), 403, "FORBIDDEN")
    assert_error(await client.get("/api/billing/export"), 401, "UNAUTHORIZED")
    assert_error(await client.get(f"/api/billing/jobs/{uuid.uuid4()}/download"), 401, "UNAUTHORIZED")

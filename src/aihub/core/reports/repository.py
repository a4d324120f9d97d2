"""Aggregate SQL for billing reports and analytics (read-only)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.core.usage import rollups
from aihub.core.usage.rollups import Figures
from aihub.kit.pagination import PageParams, keyset
from aihub.models import CreditTransaction, ReportJob, User


async def ledger_sum_before(session: AsyncSession, user_id: uuid.UUID, when: dt.datetime | None) -> int:
    """The balance as of ``when``: the sum of every ledger amount before it (order-free)."""
    stmt = select(func.coalesce(func.sum(CreditTransaction.amount), 0)).where(CreditTransaction.user_id == user_id)
    if when is not None:
        stmt = stmt.where(CreditTransaction.created_at < when)
    return int((await session.execute(stmt)).scalar_one())


@dataclass(frozen=True, slots=True)
class ReasonSums:
    """Ledger rows of one reason (of one user, for the export): credited, debited, how many."""

    reason: str
    credits: int
    debits: int
    count: int
    user_id: uuid.UUID | None = None


def _reason_sums(row: Any) -> ReasonSums:
    return ReasonSums(
        reason=row.reason,
        credits=int(row.credits),
        debits=int(row.debits),
        count=int(row.count),
        user_id=getattr(row, "user_id", None),
    )


@dataclass(frozen=True, slots=True)
class Spender:
    """One of the top users: their sums and their email (None once the user is gone)."""

    figures: Figures
    email: str | None


@dataclass(frozen=True, slots=True)
class ReportParams:
    """What a report job covers, as its ``params`` column keeps it (ISO 8601 texts, UTC)."""

    user_id: str | None
    start: str | None
    end: str | None

    @classmethod
    def of(cls, stored: Mapping[str, Any]) -> ReportParams:
        return cls(stored.get("userId"), stored.get("from"), stored.get("to"))

    def document(self) -> dict[str, str | None]:
        """The JSON document stored, hashed and audited (its keys are the query's names)."""
        return {"userId": self.user_id, "from": self.start, "to": self.end}

    def window(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        start = dt.datetime.fromisoformat(self.start) if self.start else None
        end = dt.datetime.fromisoformat(self.end) if self.end else None
        return start, end


@dataclass(frozen=True, slots=True)
class Claimed:
    """A report job just claimed to run: what to compute."""

    kind: str
    format: str
    params: ReportParams


_BY_REASON = (
    func.coalesce(func.sum(case((CreditTransaction.amount > 0, CreditTransaction.amount), else_=0)), 0).label(
        "credits"
    ),
    func.coalesce(func.sum(case((CreditTransaction.amount < 0, -CreditTransaction.amount), else_=0)), 0).label(
        "debits"
    ),
    func.count().label("count"),
)


def _ledger_window(stmt: Any, start: dt.datetime | None, end: dt.datetime | None) -> Any:
    if start is not None:
        stmt = stmt.where(CreditTransaction.created_at >= start)
    if end is not None:
        stmt = stmt.where(CreditTransaction.created_at < end)
    return stmt


async def ledger_by_reason(
    session: AsyncSession, user_id: uuid.UUID, start: dt.datetime | None, end: dt.datetime | None
) -> list[ReasonSums]:
    stmt = select(CreditTransaction.reason, *_BY_REASON).where(CreditTransaction.user_id == user_id)
    stmt = _ledger_window(stmt, start, end).group_by(CreditTransaction.reason).order_by(CreditTransaction.reason)
    return [_reason_sums(r) for r in await session.execute(stmt)]


async def ledger_sums_by_user(session: AsyncSession, when: dt.datetime | None) -> dict[uuid.UUID, int]:
    """Every account's balance as of ``when`` (the export's opening and closing balances)."""
    stmt = _ledger_window(select(CreditTransaction.user_id, func.sum(CreditTransaction.amount)), None, when).group_by(
        CreditTransaction.user_id
    )
    return {user_id: int(total) for user_id, total in await session.execute(stmt)}


async def ledger_by_user_reason(
    session: AsyncSession, start: dt.datetime | None, end: dt.datetime | None
) -> list[ReasonSums]:
    stmt = select(CreditTransaction.user_id, CreditTransaction.reason, *_BY_REASON)
    stmt = _ledger_window(stmt, start, end).group_by(CreditTransaction.user_id, CreditTransaction.reason)
    return [_reason_sums(r) for r in await session.execute(stmt.order_by(CreditTransaction.reason))]


async def emails(session: AsyncSession, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    found: dict[uuid.UUID, str] = {}
    ids = list(user_ids)
    for i in range(0, len(ids), 1000):  # bounded IN lists
        stmt = select(User.id, User.email).where(User.id.in_(ids[i : i + 1000]))
        found.update({user_id: email for user_id, email in await session.execute(stmt)})
    return found


async def usage_by_model(
    session: AsyncSession,
    user_id: uuid.UUID | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    *,
    mark: dt.date | None,
) -> list[Figures]:
    return await rollups.aggregate(session, ["provider", "model"], mark=mark, start=start, end=end, user_id=user_id)


async def usage_cells(
    session: AsyncSession, start: dt.datetime | None, end: dt.datetime | None, *, mark: dt.date | None
) -> list[Figures]:
    """Usage by day x provider x model: the overview's totals, providers, models and days in one scan."""
    return await rollups.aggregate(session, ["day", "provider", "model"], mark=mark, start=start, end=end)


async def active_users_by_day(
    session: AsyncSession, start: dt.datetime | None, end: dt.datetime | None, *, mark: dt.date | None
) -> dict[str | None, int]:
    """How many users had usage on each UTC day (the console's active-users chart)."""
    counts: dict[str | None, int] = {}
    for row in await rollups.aggregate(session, ["day", "user_id"], mark=mark, start=start, end=end):
        counts[row.day] = counts.get(row.day, 0) + 1
    return counts


async def top_users(
    session: AsyncSession, start: dt.datetime | None, end: dt.datetime | None, limit: int, *, mark: dt.date | None
) -> tuple[list[Spender], int]:
    """The ``limit`` users who spent most, and how many users had any usage (one scan)."""
    rows = await rollups.aggregate(session, ["user_id"], mark=mark, start=start, end=end, top=limit)
    found = await emails(session, [r.user_id for r in rows if r.user_id is not None])
    spenders = [Spender(row, found.get(row.user_id) if row.user_id is not None else None) for row in rows]
    return spenders, int(rows[0].groups) if rows else 0


# ---------------------------------------------------------------- report jobs

IN_FLIGHT = ("queued", "running")


async def _changed(session: AsyncSession, stmt: Any) -> int:
    result: Any = await session.execute(stmt.execution_options(synchronize_session=False))
    return int(result.rowcount or 0)


def _alive(now: dt.datetime) -> Any:
    return or_(ReportJob.expires_at.is_(None), ReportJob.expires_at > now)


async def in_flight(session: AsyncSession, requested_by: str, params_hash: str) -> ReportJob | None:
    stmt = (
        select(ReportJob)
        .where(
            ReportJob.requested_by == requested_by,
            ReportJob.params_hash == params_hash,
            ReportJob.status.in_(IN_FLIGHT),
        )
        .order_by(ReportJob.created_at.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_job(session: AsyncSession, job_id: uuid.UUID, now: dt.datetime) -> ReportJob | None:
    """The job, unless its retention ran out (then it is gone, whether or not the sweep ran yet)."""
    stmt = select(ReportJob).where(ReportJob.id == job_id, _alive(now))
    return (await session.execute(stmt)).scalar_one_or_none()


def own_jobs(params: PageParams, requested_by: str, kinds: Sequence[str], now: dt.datetime) -> Select[Any]:
    stmt = select(ReportJob).where(ReportJob.requested_by == requested_by, ReportJob.kind.in_(list(kinds)), _alive(now))
    return keyset(stmt, ReportJob.created_at, ReportJob.id, params)


async def fetch_jobs(session: AsyncSession, stmt: Select[Any]) -> Sequence[ReportJob]:
    rows: Sequence[ReportJob] = (await session.execute(stmt)).scalars().all()
    return rows


async def result_of(session: AsyncSession, job_id: uuid.UUID) -> bytes | None:
    return (await session.execute(select(ReportJob.result).where(ReportJob.id == job_id))).scalar_one_or_none()


async def claim(session: AsyncSession, job_id: uuid.UUID, now: dt.datetime) -> Claimed | None:
    """queued -> running in one conditional UPDATE: of several deliveries of a job, one runs it."""
    stmt = (
        update(ReportJob)
        .where(ReportJob.id == job_id, ReportJob.status == "queued")
        .values(status="running", started_at=now)
        .returning(ReportJob.kind, ReportJob.format, ReportJob.params)
    )
    row = (await session.execute(stmt)).first()
    return Claimed(row.kind, row.format, ReportParams.of(row.params)) if row else None


async def finish(
    session: AsyncSession,
    job_id: uuid.UUID,
    *,
    result: bytes,
    content_type: str,
    filename: str,
    now: dt.datetime,
    expires_at: dt.datetime,
) -> bool:
    """The whole result and the succeeded status in one statement (only from running)."""
    stmt = (
        update(ReportJob)
        .where(ReportJob.id == job_id, ReportJob.status == "running")
        .values(
            status="succeeded",
            result=result,
            result_bytes=len(result),
            content_type=content_type,
            filename=filename,
            finished_at=now,
            expires_at=expires_at,
        )
    )
    return await _changed(session, stmt) > 0


async def fail(
    session: AsyncSession, job_id: uuid.UUID, *, code: str, message: str, now: dt.datetime, expires_at: dt.datetime
) -> bool:
    stmt = (
        update(ReportJob)
        .where(ReportJob.id == job_id, ReportJob.status.in_(IN_FLIGHT))
        .values(status="failed", error_code=code, error_message=message[:500], finished_at=now, expires_at=expires_at)
    )
    return await _changed(session, stmt) > 0


async def fail_stale(
    session: AsyncSession,
    *,
    status: str,
    before: dt.datetime,
    code: str,
    message: str,
    now: dt.datetime,
    expires_at: dt.datetime,
) -> int:
    """Fail jobs stuck in ``status`` since before ``before`` (running: by start; queued: by creation)."""
    since = ReportJob.started_at if status == "running" else ReportJob.created_at
    stmt = (
        update(ReportJob)
        .where(ReportJob.status == status, since < before)
        .values(status="failed", error_code=code, error_message=message, finished_at=now, expires_at=expires_at)
    )
    return await _changed(session, stmt)


async def purge_expired(session: AsyncSession, now: dt.datetime) -> int:
    stmt = delete(ReportJob).where(ReportJob.expires_at <= now)
    return await _changed(session, stmt)

"""Aggregate SQL for billing reports and analytics (read-only)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import case, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.kit.db import utc_day
from aihub.models import CreditTransaction, UsageEvent, User


async def ledger_sum_before(session: AsyncSession, user_id: uuid.UUID, when: dt.datetime | None) -> int:
    """The balance as of ``when``: the sum of every ledger amount before it (order-free)."""
    stmt = select(func.coalesce(func.sum(CreditTransaction.amount), 0)).where(CreditTransaction.user_id == user_id)
    if when is not None:
        stmt = stmt.where(CreditTransaction.created_at < when)
    return int((await session.execute(stmt)).scalar_one())


async def ledger_by_reason(
    session: AsyncSession, user_id: uuid.UUID, start: dt.datetime | None, end: dt.datetime | None
) -> list[dict[str, Any]]:
    stmt = select(
        CreditTransaction.reason,
        func.coalesce(func.sum(case((CreditTransaction.amount > 0, CreditTransaction.amount), else_=0)), 0).label(
            "credits"
        ),
        func.coalesce(func.sum(case((CreditTransaction.amount < 0, -CreditTransaction.amount), else_=0)), 0).label(
            "debits"
        ),
        func.count().label("count"),
    ).where(CreditTransaction.user_id == user_id)
    if start is not None:
        stmt = stmt.where(CreditTransaction.created_at >= start)
    if end is not None:
        stmt = stmt.where(CreditTransaction.created_at < end)
    stmt = stmt.group_by(CreditTransaction.reason).order_by(CreditTransaction.reason)
    return [dict(r._mapping) for r in await session.execute(stmt)]


def _usage_window(stmt: Any, start: dt.datetime | None, end: dt.datetime | None) -> Any:
    if start is not None:
        stmt = stmt.where(UsageEvent.created_at >= start)
    if end is not None:
        stmt = stmt.where(UsageEvent.created_at < end)
    return stmt


_TOTALS = (
    func.count().label("requests"),
    func.coalesce(func.sum(UsageEvent.input_tokens), 0).label("input_tokens"),
    func.coalesce(func.sum(UsageEvent.output_tokens), 0).label("output_tokens"),
    func.coalesce(func.sum(UsageEvent.credits), 0).label("credits"),
)


async def usage_by_model(
    session: AsyncSession, user_id: uuid.UUID | None, start: dt.datetime | None, end: dt.datetime | None
) -> list[dict[str, Any]]:
    stmt = select(UsageEvent.provider, UsageEvent.model, *_TOTALS)
    if user_id is not None:
        stmt = stmt.where(UsageEvent.user_id == user_id)
    stmt = _usage_window(stmt, start, end).group_by(UsageEvent.provider, UsageEvent.model)
    stmt = stmt.order_by(UsageEvent.provider, UsageEvent.model)
    return [dict(r._mapping) for r in await session.execute(stmt)]


async def usage_totals(session: AsyncSession, start: dt.datetime | None, end: dt.datetime | None) -> dict[str, Any]:
    stmt = _usage_window(select(*_TOTALS, func.count(distinct(UsageEvent.user_id)).label("active_users")), start, end)
    return dict((await session.execute(stmt)).one()._mapping)


async def top_users(
    session: AsyncSession, start: dt.datetime | None, end: dt.datetime | None, limit: int
) -> list[dict[str, Any]]:
    stmt = select(UsageEvent.user_id, *_TOTALS).group_by(UsageEvent.user_id)
    stmt = _usage_window(stmt, start, end).order_by(func.sum(UsageEvent.credits).desc()).limit(limit)
    rows = [dict(r._mapping) for r in await session.execute(stmt)]
    if rows:
        emails = dict(
            (await session.execute(select(User.id, User.email).where(User.id.in_([r["user_id"] for r in rows])))).all()
        )
        for row in rows:
            row["email"] = emails.get(row["user_id"])
    return rows


async def daily(session: AsyncSession, start: dt.datetime | None, end: dt.datetime | None) -> list[dict[str, Any]]:
    day = utc_day(session.get_bind().dialect.name, UsageEvent.created_at)
    stmt = _usage_window(select(day.label("day"), *_TOTALS), start, end).group_by(day).order_by(day)
    return [dict(r._mapping) for r in await session.execute(stmt)]

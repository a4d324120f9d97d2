"""Aggregate SQL for billing reports and analytics (read-only)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.core.usage import rollups
from aihub.models import CreditTransaction, User


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


async def usage_by_model(
    session: AsyncSession,
    user_id: uuid.UUID | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    *,
    mark: dt.date | None,
) -> list[dict[str, Any]]:
    return await rollups.aggregate(session, ["provider", "model"], mark=mark, start=start, end=end, user_id=user_id)


async def usage_totals(
    session: AsyncSession, start: dt.datetime | None, end: dt.datetime | None, *, mark: dt.date | None
) -> dict[str, Any]:
    (totals,) = await rollups.aggregate(session, [], mark=mark, start=start, end=end)
    totals["active_users"] = await rollups.active_users(session, mark=mark, start=start, end=end)
    return totals


async def top_users(
    session: AsyncSession, start: dt.datetime | None, end: dt.datetime | None, limit: int, *, mark: dt.date | None
) -> list[dict[str, Any]]:
    rows = await rollups.aggregate(session, ["user_id"], mark=mark, start=start, end=end, top=limit)
    if rows:
        emails = dict(
            (await session.execute(select(User.id, User.email).where(User.id.in_([r["user_id"] for r in rows])))).all()
        )
        for row in rows:
            row["email"] = emails.get(row["user_id"])
    return rows


async def daily(
    session: AsyncSession, start: dt.datetime | None, end: dt.datetime | None, *, mark: dt.date | None
) -> list[dict[str, Any]]:
    return await rollups.aggregate(session, ["day"], mark=mark, start=start, end=end)

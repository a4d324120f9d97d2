"""SQL for usage events, quotas and their counters."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, Literal, cast

from sqlalchemy import Select, Table, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.core.usage import rollups
from aihub.kit.pagination import PageParams, keyset
from aihub.models import QuotaLimit, UsageEvent

Claim = Literal["claimed", "duplicate", "unknown_user"]


_EVENTS = cast(Table, UsageEvent.__table__)  # column names ("metadata"), not the ORM's attributes
# Built once per dialect (the ingestion hot path; building cost more CPU than running it).
_CLAIM: dict[str, Any] = {
    name: dialect.insert(_EVENTS).on_conflict_do_nothing(index_elements=["request_id"]).returning(_EVENTS.c.id)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
_SETTLE = (
    update(_EVENTS)
    .where(_EVENTS.c.id == bindparam("event_id"))
    .values(transaction_id=bindparam("transaction_id"), balance_after=bindparam("balance"))
)


async def claim(session: AsyncSession, values: dict[str, Any]) -> Claim:
    """Insert the event unless its request ID is taken: one statement, no savepoint.

    On PostgreSQL a concurrent insert of the same request ID waits on the unique index until
    the other transaction ends, so a duplicate sees the committed original (or takes over if
    the original rolled back). Any other constraint that fails is the user's foreign key (the
    rest is validated before); the transaction is then spoilt, and the caller raises anyway.
    """
    try:
        inserted = (await session.execute(_CLAIM[session.get_bind().dialect.name], values)).first()
    except IntegrityError:
        return "unknown_user"
    return "claimed" if inserted is not None else "duplicate"


async def by_request_id(session: AsyncSession, request_id: str) -> UsageEvent | None:
    stmt = select(UsageEvent).where(UsageEvent.request_id == request_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def settle(session: AsyncSession, event_id: uuid.UUID, transaction_id: uuid.UUID | None, balance: int) -> None:
    await session.execute(_SETTLE, {"event_id": event_id, "transaction_id": transaction_id, "balance": balance})


def _filters(
    user_id: uuid.UUID | None,
    provider: str | None,
    model: str | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> list[Any]:
    conditions: list[Any] = []
    if user_id is not None:
        conditions.append(UsageEvent.user_id == user_id)
    if provider:
        conditions.append(UsageEvent.provider == provider)
    if model:
        conditions.append(UsageEvent.model == model)
    if start:
        conditions.append(UsageEvent.created_at >= start)
    if end:
        conditions.append(UsageEvent.created_at < end)
    return conditions


def search(
    params: PageParams,
    *,
    user_id: uuid.UUID | None,
    provider: str | None,
    model: str | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> Select[Any]:
    stmt = select(UsageEvent).where(*_filters(user_id, provider, model, start, end))
    return keyset(stmt, UsageEvent.created_at, UsageEvent.id, params)


async def fetch(session: AsyncSession, stmt: Select[Any]) -> Sequence[UsageEvent]:
    rows: Sequence[UsageEvent] = (await session.execute(stmt)).scalars().all()
    return rows


async def summary(
    session: AsyncSession,
    group_by: str,
    *,
    user_id: uuid.UUID | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> list[tuple[str, rollups.Figures]]:
    """Grouped totals by their key (``provider/model``, ``YYYY-MM-DD``…), in key order: rollups
    for complete past days, raw events for the rest (see rollups)."""
    keys = {
        "day": ["day"],
        "provider": ["provider"],
        "model": ["provider", "model"],
        "day_model": ["day", "provider", "model"],  # the console's usage chart: per day, split by model
    }[group_by]
    mark = await rollups.complete_until(session)
    rows = await rollups.aggregate(session, keys, mark=mark, start=start, end=end, user_id=user_id)
    return sorted((("/".join(str(getattr(row, k)) for k in keys), row) for row in rows), key=lambda item: item[0])


async def quota_limits(session: AsyncSession, scope: str) -> Sequence[QuotaLimit]:
    stmt = select(QuotaLimit).where(QuotaLimit.scope == scope).order_by(QuotaLimit.position)
    rows: Sequence[QuotaLimit] = (await session.execute(stmt)).scalars().all()
    return rows


async def delete_quota_limits(session: AsyncSession, scope: str) -> None:
    await session.execute(delete(QuotaLimit).where(QuotaLimit.scope == scope))

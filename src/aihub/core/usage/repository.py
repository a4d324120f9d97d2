"""SQL for usage events, quotas and their counters."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, Uuid, bindparam, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.core.usage import rollups
from aihub.kit.pagination import PageParams, keyset
from aihub.models import Quota, QuotaCounter, UsageEvent


async def claim(session: AsyncSession, event: UsageEvent) -> bool:
    """Insert the event under a savepoint; False when its request ID is already taken.

    On PostgreSQL a concurrent insert of the same request ID waits on the unique index until
    the other transaction ends, so a duplicate sees the committed original (or takes over if
    the original rolled back).
    """
    try:
        async with session.begin_nested():
            session.add(event)
            await session.flush()
    except IntegrityError:
        # The savepoint's rollback already dropped the pending instance from the session.
        return False
    return True


async def by_request_id(session: AsyncSession, request_id: str) -> UsageEvent | None:
    stmt = select(UsageEvent).where(UsageEvent.request_id == request_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def settle(session: AsyncSession, event_id: uuid.UUID, transaction_id: uuid.UUID | None, balance: int) -> None:
    await session.execute(
        update(UsageEvent).where(UsageEvent.id == event_id).values(transaction_id=transaction_id, balance_after=balance)
    )


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
) -> list[dict[str, Any]]:
    """Grouped totals: rollups for complete past days, raw events for the rest (see rollups)."""
    keys = {"day": ["day"], "provider": ["provider"], "model": ["provider", "model"]}[group_by]
    mark = await rollups.complete_until(session)
    rows = await rollups.aggregate(session, keys, mark=mark, start=start, end=end, user_id=user_id)
    items = [{"key": "/".join(str(row[k]) for k in keys), **{m: row[m] for m in rollups.MEASURES}} for row in rows]
    return sorted(items, key=lambda item: item["key"])


async def get_quota(session: AsyncSession, scope: str) -> Quota | None:
    return await session.get(Quota, scope)


async def quotas_for(session: AsyncSession, scopes: Sequence[str]) -> dict[str, Quota]:
    if not scopes:
        return {}
    rows = (await session.execute(select(Quota).where(Quota.scope.in_(list(scopes))))).scalars().all()
    return {q.scope: q for q in rows}


# One statement: add this event to the period's counter only if every limit still holds.
# A new counter row holds just this event (checked against the limits before the call).
_CONSUME = text(
    """
    INSERT INTO quota_counters (user_id, period_key, credits, tokens, requests)
    VALUES (:user_id, :period_key, :credits, :tokens, 1)
    ON CONFLICT (user_id, period_key) DO UPDATE SET
        credits = quota_counters.credits + excluded.credits,
        tokens = quota_counters.tokens + excluded.tokens,
        requests = quota_counters.requests + 1
    WHERE (CAST(:max_credits AS BIGINT) IS NULL OR quota_counters.credits + excluded.credits <= :max_credits)
      AND (CAST(:max_tokens AS BIGINT) IS NULL OR quota_counters.tokens + excluded.tokens <= :max_tokens)
      AND (CAST(:max_requests AS BIGINT) IS NULL OR quota_counters.requests + 1 <= :max_requests)
    RETURNING credits, tokens, requests
    """
).bindparams(bindparam("user_id", type_=Uuid()))


async def consume(
    session: AsyncSession, user_id: uuid.UUID, period_key: str, credits: int, tokens: int, quota: Quota
) -> bool:
    params = {
        "user_id": user_id,
        "period_key": period_key,
        "credits": credits,
        "tokens": tokens,
        "max_credits": quota.max_credits,
        "max_tokens": quota.max_tokens,
        "max_requests": quota.max_requests,
    }
    return (await session.execute(_CONSUME, params)).first() is not None


async def counter(session: AsyncSession, user_id: uuid.UUID, period_key: str) -> tuple[int, int, int]:
    stmt = select(QuotaCounter.credits, QuotaCounter.tokens, QuotaCounter.requests).where(
        QuotaCounter.user_id == user_id, QuotaCounter.period_key == period_key
    )
    row = (await session.execute(stmt)).first()
    return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

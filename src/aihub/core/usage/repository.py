"""SQL for usage events, quotas and their counters."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, Literal, cast

from sqlalchemy import Select, Table, Uuid, and_, bindparam, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.core.usage import rollups
from aihub.kit.pagination import PageParams, keyset
from aihub.models import Quota, QuotaCounter, Role, UsageEvent, UserRole

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
) -> list[dict[str, Any]]:
    """Grouped totals: rollups for complete past days, raw events for the rest (see rollups)."""
    keys = {
        "day": ["day"],
        "provider": ["provider"],
        "model": ["provider", "model"],
        "day_model": ["day", "provider", "model"],  # the console's usage chart: per day, split by model
    }[group_by]
    mark = await rollups.complete_until(session)
    rows = await rollups.aggregate(session, keys, mark=mark, start=start, end=end, user_id=user_id)
    items = [{"key": "/".join(str(row[k]) for k in keys), **{m: row[m] for m in rollups.MEASURES}} for row in rows]
    return sorted(items, key=lambda item: item["key"])


async def get_quota(session: AsyncSession, scope: str) -> Quota | None:
    return await session.get(Quota, scope)


async def quota_of_user(session: AsyncSession, user_id: uuid.UUID) -> Quota | None:
    """The quota that applies, in one query: the user's own, else that of their highest role
    (level, then name, as the role list is ordered) that has one."""
    own = f"user:{user_id}"
    stmt = (
        select(Quota)
        .outerjoin(UserRole, and_(UserRole.user_id == user_id, Quota.scope == literal("role:") + UserRole.role_name))
        .outerjoin(Role, Role.name == UserRole.role_name)
        .where(or_(Quota.scope == own, UserRole.user_id.is_not(None)))
        .order_by((Quota.scope == own).desc(), Role.level.desc(), Role.name)
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


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


# PostgreSQL: find the applicable quota (the user's own, else their highest role's) and
# consume it in ONE statement: the usage hot path pays one round trip for its quota.
_CONSUME_APPLICABLE_PG = text(
    """
    WITH q AS (
        SELECT q.scope, q.period, q.max_credits, q.max_tokens, q.max_requests
        FROM quotas q
        LEFT JOIN user_roles ur ON ur.user_id = :user_id AND q.scope = 'role:' || ur.role_name
        LEFT JOIN roles r ON r.name = ur.role_name
        WHERE q.scope = :own OR ur.user_id IS NOT NULL
        ORDER BY (q.scope = :own) DESC, r.level DESC, r.name
        LIMIT 1
    ), up AS (
        INSERT INTO quota_counters (user_id, period_key, credits, tokens, requests)
        SELECT :user_id, CASE q.period WHEN 'day' THEN :day_key ELSE :month_key END,
               CAST(:credits AS BIGINT), CAST(:tokens AS BIGINT), 1
        FROM q
        WHERE (q.max_credits IS NULL OR :credits <= q.max_credits)
          AND (q.max_tokens IS NULL OR :tokens <= q.max_tokens)
          AND (q.max_requests IS NULL OR q.max_requests >= 1)
        ON CONFLICT (user_id, period_key) DO UPDATE SET
            credits = quota_counters.credits + excluded.credits,
            tokens = quota_counters.tokens + excluded.tokens,
            requests = quota_counters.requests + 1
        WHERE ((SELECT max_credits FROM q) IS NULL
               OR quota_counters.credits + excluded.credits <= (SELECT max_credits FROM q))
          AND ((SELECT max_tokens FROM q) IS NULL
               OR quota_counters.tokens + excluded.tokens <= (SELECT max_tokens FROM q))
          AND ((SELECT max_requests FROM q) IS NULL
               OR quota_counters.requests + 1 <= (SELECT max_requests FROM q))
        RETURNING 1
    )
    SELECT q.scope, q.period, (SELECT count(*) FROM up) AS consumed FROM q
    """
).bindparams(bindparam("user_id", type_=Uuid()))


async def consume_applicable(
    session: AsyncSession, user_id: uuid.UUID, keys: dict[str, str], credits: int, tokens: int
) -> tuple[str, str, bool] | None:
    """Add this usage to the counter of the quota that applies, if every limit still holds.

    ``keys`` maps a period kind (day, month) to its counter key. Returns (scope, period kind,
    consumed), or None when no quota applies.
    """
    if session.get_bind().dialect.name == "postgresql":
        params = {
            "user_id": user_id,
            "own": f"user:{user_id}",
            "day_key": keys["day"],
            "month_key": keys["month"],
            "credits": credits,
            "tokens": tokens,
        }
        row = (await session.execute(_CONSUME_APPLICABLE_PG, params)).first()
        return None if row is None else (row.scope, row.period, bool(row.consumed))
    # SQLite: one writer at a time, so two statements are as safe.
    quota = await quota_of_user(session, user_id)
    if quota is None:
        return None
    fits_alone = (
        (quota.max_credits is None or credits <= quota.max_credits)
        and (quota.max_tokens is None or tokens <= quota.max_tokens)
        and (quota.max_requests is None or quota.max_requests >= 1)
    )
    consumed = fits_alone and await consume(session, user_id, keys[quota.period], credits, tokens, quota)
    return quota.scope, quota.period, consumed


async def counter(session: AsyncSession, user_id: uuid.UUID, period_key: str) -> tuple[int, int, int]:
    stmt = select(QuotaCounter.credits, QuotaCounter.tokens, QuotaCounter.requests).where(
        QuotaCounter.user_id == user_id, QuotaCounter.period_key == period_key
    )
    row = (await session.execute(stmt)).first()
    return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

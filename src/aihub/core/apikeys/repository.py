"""SQL of API keys and their counters."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, bindparam, select, text
from sqlalchemy import Uuid as UuidType
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.kit.pagination import PageParams, keyset
from aihub.models import ApiKey, ApiKeyCounter


async def by_prefix(session: AsyncSession, prefix: str) -> ApiKey | None:
    stmt = select(ApiKey).where(ApiKey.prefix == prefix)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get(session: AsyncSession, key_id: uuid.UUID, *, for_update: bool = False) -> ApiKey | None:
    if not for_update:
        return await session.get(ApiKey, key_id)
    # Re-read under the lock even when the session already holds the row (the caller's own
    # key): what decides must be the committed state, not the copy loaded at authentication.
    return await session.get(ApiKey, key_id, with_for_update=True, populate_existing=True)


def search(params: PageParams, user_id: uuid.UUID | None) -> Select[Any]:
    stmt = select(ApiKey)
    if user_id is not None:
        stmt = stmt.where(ApiKey.user_id == user_id)
    return keyset(stmt, ApiKey.created_at, ApiKey.id, params)


async def fetch(session: AsyncSession, stmt: Select[Any]) -> Sequence[ApiKey]:
    rows: Sequence[ApiKey] = (await session.execute(stmt)).scalars().all()
    return rows


async def active_ids_of_user(session: AsyncSession, user_id: uuid.UUID) -> list[uuid.UUID]:
    stmt = select(ApiKey.id).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
    return list((await session.execute(stmt)).scalars().all())


async def counter(session: AsyncSession, key_id: uuid.UUID, period_key: str) -> tuple[int, int]:
    stmt = select(ApiKeyCounter.credits, ApiKeyCounter.tokens).where(
        ApiKeyCounter.key_id == key_id, ApiKeyCounter.period_key == period_key
    )
    row = (await session.execute(stmt)).first()
    return (int(row[0]), int(row[1])) if row else (0, 0)


# ONE statement reserves against a key's counter, only if the limit still holds afterwards:
# concurrent reservations queue on the counter row and each sees the ones before it, so a
# budget that pays for 50 admits exactly 50. Plain SQL: PostgreSQL and SQLite ≥ 3.35 alike
# (the SELECT's WHERE also settles SQLite's INSERT … SELECT … ON CONFLICT parse).
_RESERVE = text(
    """
    INSERT INTO api_key_counters (key_id, period_key, credits, tokens)
    SELECT :key_id, :period_key, CAST(:credits AS BIGINT), CAST(:tokens AS BIGINT)
    WHERE (CAST(:max_credits AS BIGINT) IS NULL OR :credits <= :max_credits)
      AND (CAST(:max_tokens AS BIGINT) IS NULL OR :tokens <= :max_tokens)
    ON CONFLICT (key_id, period_key) DO UPDATE SET
        credits = api_key_counters.credits + excluded.credits,
        tokens = api_key_counters.tokens + excluded.tokens
    WHERE (CAST(:max_credits AS BIGINT) IS NULL OR api_key_counters.credits + excluded.credits <= :max_credits)
      AND (CAST(:max_tokens AS BIGINT) IS NULL OR api_key_counters.tokens + excluded.tokens <= :max_tokens)
    RETURNING credits
    """
).bindparams(bindparam("key_id", type_=UuidType()))

# Give back (negative deltas) or add actual usage; never below zero.
_ADJUST = text(
    """
    UPDATE api_key_counters SET
        credits = CASE WHEN credits + :credits < 0 THEN 0 ELSE credits + :credits END,
        tokens = CASE WHEN tokens + :tokens < 0 THEN 0 ELSE tokens + :tokens END
    WHERE key_id = :key_id AND period_key = :period_key
    """
).bindparams(bindparam("key_id", type_=UuidType()))


async def reserve(
    session: AsyncSession,
    key_id: uuid.UUID,
    period_key: str,
    *,
    credits: int,
    tokens: int,
    max_credits: int | None,
    max_tokens: int | None,
) -> bool:
    params = {
        "key_id": key_id,
        "period_key": period_key,
        "credits": credits,
        "tokens": tokens,
        "max_credits": max_credits,
        "max_tokens": max_tokens,
    }
    return (await session.execute(_RESERVE, params)).first() is not None


async def adjust(session: AsyncSession, key_id: uuid.UUID, period_key: str, *, credits: int, tokens: int) -> None:
    params = {"key_id": key_id, "period_key": period_key, "credits": credits, "tokens": tokens}
    await session.execute(_ADJUST, params)

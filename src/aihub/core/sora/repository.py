"""SQL for Sora sessions and generations."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.models import SoraGeneration, SoraSession


async def session_by_hash(session: AsyncSession, token_hash: str) -> SoraSession | None:
    stmt = select(SoraSession).where(SoraSession.token_hash == token_hash)
    return (await session.execute(stmt)).scalar_one_or_none()


async def sessions_of(session: AsyncSession, user_id: uuid.UUID) -> Sequence[SoraSession]:
    stmt = select(SoraSession).where(SoraSession.user_id == user_id).order_by(SoraSession.created_at.desc())
    rows: Sequence[SoraSession] = (await session.execute(stmt)).scalars().all()
    return rows


async def revoke_session(session: AsyncSession, session_id: uuid.UUID, user_id: uuid.UUID, now: dt.datetime) -> bool:
    result = await session.execute(
        update(SoraSession)
        .where(SoraSession.id == session_id, SoraSession.user_id == user_id, SoraSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return bool(getattr(result, "rowcount", 0))


async def touch(session: AsyncSession, session_id: uuid.UUID, now: dt.datetime) -> None:
    await session.execute(update(SoraSession).where(SoraSession.id == session_id).values(last_used_at=now))


async def generation(session: AsyncSession, generation_id: uuid.UUID) -> SoraGeneration | None:
    return await session.get(SoraGeneration, generation_id)


async def resolve(
    session: AsyncSession, generation_id: uuid.UUID, user_id: uuid.UUID, status: str, now: dt.datetime, **values: Any
) -> bool:
    """Move a pending generation to its final status; False when it is not pending (any more).

    One conditional UPDATE: of a concurrent complete and fail, exactly one matches.
    """
    result = await session.execute(
        update(SoraGeneration)
        .where(
            SoraGeneration.id == generation_id,
            SoraGeneration.user_id == user_id,
            SoraGeneration.status == "pending",
        )
        .values(status=status, resolved_at=now, **values)
    )
    return bool(getattr(result, "rowcount", 0))


async def expire_pending(session: AsyncSession, now: dt.datetime, limit: int = 500) -> Sequence[SoraGeneration]:
    """Pending generations whose hold has run out: marked expired (their holds release themselves)."""
    ids = (
        (
            await session.execute(
                select(SoraGeneration.id)
                .where(SoraGeneration.status == "pending", SoraGeneration.expires_at <= now)
                .limit(limit)
            )
        )
        .scalars()
        .all()
    )
    if not ids:
        return []
    await session.execute(
        update(SoraGeneration)
        .where(SoraGeneration.id.in_(ids), SoraGeneration.status == "pending")
        .values(status="expired", resolved_at=now, charged=0)
    )
    rows: Sequence[SoraGeneration] = (
        (await session.execute(select(SoraGeneration).where(SoraGeneration.id.in_(ids)))).scalars().all()
    )
    return rows

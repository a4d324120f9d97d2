"""SQL of usage authorizations: each resolves once, by one conditional UPDATE."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.models import UsageAuthorization

_auth = cast(Table, UsageAuthorization.__table__)


async def get(session: AsyncSession, auth_id: uuid.UUID) -> UsageAuthorization | None:
    return await session.get(UsageAuthorization, auth_id, populate_existing=True)


async def resolve(session: AsyncSession, auth_id: uuid.UUID, status: str, now: dt.datetime) -> bool:
    """active and unexpired → ``status``, once: of two concurrent settles (or a settle and a
    cancel, or the sweep), exactly one matches the row."""
    stmt = (
        update(_auth)
        .where(_auth.c.id == auth_id, _auth.c.status == "active", _auth.c.expires_at > now)
        .values(status=status, resolved_at=now)
        .returning(_auth.c.id)
    )
    return (await session.execute(stmt)).first() is not None


async def expire(session: AsyncSession, auth_id: uuid.UUID, now: dt.datetime) -> bool:
    """active and overdue → expired, once."""
    stmt = (
        update(_auth)
        .where(_auth.c.id == auth_id, _auth.c.status == "active", _auth.c.expires_at <= now)
        .values(status="expired", resolved_at=now)
        .returning(_auth.c.id)
    )
    return (await session.execute(stmt)).first() is not None


async def overdue(session: AsyncSession, now: dt.datetime, limit: int) -> Sequence[uuid.UUID]:
    stmt = (
        select(_auth.c.id)
        .where(_auth.c.status == "active", _auth.c.expires_at <= now)
        .order_by(_auth.c.expires_at)
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars().all())


async def link_event(session: AsyncSession, auth_id: uuid.UUID, event_id: uuid.UUID) -> None:
    await session.execute(update(_auth).where(_auth.c.id == auth_id).values(usage_event_id=event_id))

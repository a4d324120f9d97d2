"""SQL for every kind of session: refresh tokens, service tokens, and the video tool's sessions.

Auth issues refresh and service tokens and Sora its sessions; ending all of a user's sessions
(suspension, deletion, a new password) reaches every kind from here.

Spending a refresh token is one conditional UPDATE (``… WHERE used_at IS NULL … RETURNING``):
of two requests racing with the same token, the database lets exactly one match the row.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from aihub.kit.db import as_utc
from aihub.kit.pagination import PageParams, keyset
from aihub.models import RefreshToken, ServiceToken, SoraSession


async def add_refresh(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    family_id: uuid.UUID,
    token_hash: str,
    now: dt.datetime,
    ttl: dt.timedelta,
) -> RefreshToken:
    row = RefreshToken(
        user_id=user_id, family_id=family_id, token_hash=token_hash, created_at=now, expires_at=now + ttl
    )
    session.add(row)
    await session.flush()
    return row


async def spend_refresh(session: AsyncSession, token_hash: str, now: dt.datetime) -> tuple[uuid.UUID, uuid.UUID] | None:
    """Mark a live token used; returns ``(user_id, family_id)`` only for the one caller that won."""
    stmt = (
        update(RefreshToken)
        .where(
            RefreshToken.token_hash == token_hash,
            RefreshToken.used_at.is_(None),
            RefreshToken.revoked_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(RefreshToken.user_id, RefreshToken.family_id)
        .execution_options(synchronize_session=False)
    )
    row = (await session.execute(stmt)).first()
    return None if row is None else (row[0], row[1])


async def find_refresh(session: AsyncSession, token_hash: str) -> RefreshToken | None:
    stmt = select(RefreshToken).where(RefreshToken.token_hash == token_hash)
    return (await session.execute(stmt)).scalar_one_or_none()


async def _revoke_where(session: AsyncSession, now: dt.datetime, *where: ColumnElement[bool]) -> int:
    """Revoke every live refresh token matching ``where``; how many were still live."""
    stmt = (
        update(RefreshToken)
        .where(RefreshToken.revoked_at.is_(None), *where)
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    result: Any = await session.execute(stmt)
    return int(result.rowcount or 0)


async def revoke_family(session: AsyncSession, family_id: uuid.UUID, now: dt.datetime) -> int:
    return await _revoke_where(session, now, RefreshToken.family_id == family_id)


async def revoke_family_of_user(
    session: AsyncSession, family_id: uuid.UUID, user_id: uuid.UUID, now: dt.datetime
) -> int:
    return await _revoke_where(session, now, RefreshToken.family_id == family_id, RefreshToken.user_id == user_id)


async def family_started_at(session: AsyncSession, family_id: uuid.UUID) -> dt.datetime | None:
    """When the family's first refresh token was issued (its sign-in)."""
    stmt = select(func.min(RefreshToken.created_at)).where(RefreshToken.family_id == family_id)
    started: dt.datetime | None = (await session.execute(stmt)).scalar_one_or_none()
    return as_utc(started)


async def families_issued_since(session: AsyncSession, user_id: uuid.UUID, since: dt.datetime) -> list[uuid.UUID]:
    """The user's refresh families that issued a token (and so an access token) after ``since``:
    the only ones that may still hold a live access token."""
    stmt = (
        select(RefreshToken.family_id)
        .where(RefreshToken.user_id == user_id, RefreshToken.created_at > since)
        .distinct()
    )
    return sorted((await session.execute(stmt)).scalars().all())


async def revoke_user_refresh_tokens(session: AsyncSession, user_id: uuid.UUID, now: dt.datetime) -> int:
    """Every live refresh token of one user (suspension, deletion)."""
    return await _revoke_where(session, now, RefreshToken.user_id == user_id)


async def add_service_token(session: AsyncSession, row: ServiceToken) -> ServiceToken:
    session.add(row)
    await session.flush()
    return row


async def get_service_token(
    session: AsyncSession, token_id: uuid.UUID, *, for_update: bool = False
) -> ServiceToken | None:
    stmt = select(ServiceToken).where(ServiceToken.id == token_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


def list_service_tokens(params: PageParams) -> Select[Any]:
    return keyset(select(ServiceToken), ServiceToken.created_at, ServiceToken.id, params)


async def fetch_service_tokens(session: AsyncSession, stmt: Select[Any]) -> Sequence[ServiceToken]:
    return list((await session.execute(stmt)).scalars().all())


async def revoke_sora_sessions(session: AsyncSession, user_id: uuid.UUID, now: dt.datetime) -> int:
    """Every live video-tool session of the user ends now."""
    result = await session.execute(
        update(SoraSession)
        .where(SoraSession.user_id == user_id, SoraSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)

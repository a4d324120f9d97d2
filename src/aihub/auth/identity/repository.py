"""SQL of the identity flows: mailed one-time tokens, users by Google account.

Spending a token is one conditional UPDATE (``… WHERE used_at IS NULL AND expires_at > now
RETURNING``): of two requests racing with the same token, exactly one matches the row.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.models import EmailToken, User

Purpose = Literal["verify", "reset"]


async def add_token(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    purpose: Purpose,
    token_hash: str,
    email: str,
    now: dt.datetime,
    ttl: dt.timedelta,
) -> EmailToken:
    row = EmailToken(
        user_id=user_id, purpose=purpose, token_hash=token_hash, email=email, created_at=now, expires_at=now + ttl
    )
    session.add(row)
    await session.flush()
    return row


async def spend_token(
    session: AsyncSession, token_hash: str, purpose: Purpose, now: dt.datetime
) -> tuple[uuid.UUID, str] | None:
    """Mark a live token used; ``(user_id, email)`` only for the one caller that won."""
    stmt = (
        update(EmailToken)
        .where(
            EmailToken.token_hash == token_hash,
            EmailToken.purpose == purpose,
            EmailToken.used_at.is_(None),
            EmailToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(EmailToken.user_id, EmailToken.email)
        .execution_options(synchronize_session=False)
    )
    row = (await session.execute(stmt)).first()
    return None if row is None else (row[0], row[1])


async def find_token(session: AsyncSession, token_hash: str, purpose: Purpose) -> EmailToken | None:
    stmt = select(EmailToken).where(EmailToken.token_hash == token_hash, EmailToken.purpose == purpose)
    return (await session.execute(stmt)).scalar_one_or_none()


async def spend_user_tokens(session: AsyncSession, user_id: uuid.UUID, purpose: Purpose, now: dt.datetime) -> int:
    """Void every other live token of this purpose (a reset spends the spare reset links too)."""
    stmt = (
        update(EmailToken)
        .where(EmailToken.user_id == user_id, EmailToken.purpose == purpose, EmailToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    result: Any = await session.execute(stmt)
    return int(result.rowcount or 0)


async def by_google_id(session: AsyncSession, google_id: str, *, for_update: bool = False) -> User | None:
    stmt = select(User).where(User.google_id == google_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()

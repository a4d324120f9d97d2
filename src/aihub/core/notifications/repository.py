"""SQL of the per-account alert settings."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from aihub.models import CreditAlertSettings, User


async def get_settings(session: AsyncSession, user_id: uuid.UUID) -> CreditAlertSettings | None:
    return await session.get(CreditAlertSettings, user_id)


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)

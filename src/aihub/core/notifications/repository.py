"""SQL of the per-account alert settings."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.models import CreditAlertSettings, User


async def get_settings(session: AsyncSession, user_id: uuid.UUID) -> CreditAlertSettings | None:
    return await session.get(CreditAlertSettings, user_id)


alert_settings = cast(Table, CreditAlertSettings.__table__)


@dataclass(frozen=True, slots=True)
class Stored:
    """An account's own alert settings as stored."""

    thresholds: list[int]
    email: bool


async def previous_settings(session: AsyncSession, user_id: uuid.UUID) -> Stored | None:
    stmt = select(alert_settings.c.thresholds, alert_settings.c.email).where(alert_settings.c.user_id == user_id)
    row = (await session.execute(stmt)).first()
    return None if row is None else Stored(list(row.thresholds), row.email)


async def upsert_settings(
    session: AsyncSession, user_id: uuid.UUID, thresholds: list[int], email: bool, now: dt.datetime
) -> None:
    """One statement, so concurrent first PUTs of one account never collide on its key."""
    maker = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = maker(alert_settings).values(user_id=user_id, thresholds=thresholds, email=email, updated_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=["user_id"],
        set_={"thresholds": stmt.excluded.thresholds, "email": stmt.excluded.email, "updated_at": now},
    )
    await session.execute(stmt)


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)

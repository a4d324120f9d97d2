"""SQL for users and their credit account row."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.kit.pagination import PageParams, keyset
from aihub.models import CreditAccount, User, UserRole


async def get(session: AsyncSession, user_id: uuid.UUID, *, for_update: bool = False) -> User | None:
    stmt = select(User).where(User.id == user_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def by_email(session: AsyncSession, email: str) -> User | None:
    return (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()


async def add(session: AsyncSession, user: User) -> User:
    session.add(user)
    await session.flush()
    session.add(CreditAccount(user_id=user.id, balance=0, reserved=0))
    await session.flush()
    return user


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search(params: PageParams, *, q: str | None, role: str | None, status: str | None) -> Select[Any]:
    stmt = select(User)
    if q:
        pattern = f"%{_escape_like(q.lower())}%"
        stmt = stmt.where(or_(User.email.like(pattern, escape="\\"), User.display_name.ilike(pattern, escape="\\")))
    if role:
        stmt = stmt.where(exists().where(UserRole.user_id == User.id, UserRole.role_name == role))
    if status:
        stmt = stmt.where(User.status == status)
    return keyset(stmt, User.created_at, User.id, params)


async def fetch(session: AsyncSession, stmt: Select[Any]) -> Sequence[User]:
    rows: Sequence[User] = (await session.execute(stmt)).scalars().all()
    return rows

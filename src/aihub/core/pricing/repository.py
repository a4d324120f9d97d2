"""SQL for model prices (current row and history)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.models import ModelPrice

# Built once: every usage event reads its price, and building the statement cost more CPU
# than running it (measured with pyinstrument on the ingestion path).
_CURRENT = select(ModelPrice).where(
    ModelPrice.provider == bindparam("provider"),
    ModelPrice.model == bindparam("model"),
    ModelPrice.effective_to.is_(None),
)


async def current(session: AsyncSession, provider: str, model: str) -> ModelPrice | None:
    return (await session.execute(_CURRENT, {"provider": provider, "model": model})).scalar_one_or_none()


async def at(session: AsyncSession, provider: str, model: str, when: dt.datetime) -> ModelPrice | None:
    """The price that was in force at ``when`` (for re-pricing or explaining past usage)."""
    stmt = (
        select(ModelPrice)
        .where(ModelPrice.provider == provider, ModelPrice.model == model, ModelPrice.effective_from <= when)
        .where((ModelPrice.effective_to.is_(None)) | (ModelPrice.effective_to > when))
        .order_by(ModelPrice.effective_from.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_current(session: AsyncSession, provider: str | None) -> Sequence[ModelPrice]:
    stmt = select(ModelPrice).where(ModelPrice.effective_to.is_(None))
    if provider:
        stmt = stmt.where(ModelPrice.provider == provider)
    rows: Sequence[ModelPrice] = (
        (await session.execute(stmt.order_by(ModelPrice.provider, ModelPrice.model))).scalars().all()
    )
    return rows


async def history(session: AsyncSession, provider: str, model: str) -> Sequence[ModelPrice]:
    stmt = (
        select(ModelPrice)
        .where(ModelPrice.provider == provider, ModelPrice.model == model)
        .order_by(ModelPrice.effective_from.desc())
    )
    rows: Sequence[ModelPrice] = (await session.execute(stmt)).scalars().all()
    return rows


async def close_current(session: AsyncSession, provider: str, model: str, when: dt.datetime) -> int:
    result = await session.execute(
        update(ModelPrice)
        .where(ModelPrice.provider == provider, ModelPrice.model == model, ModelPrice.effective_to.is_(None))
        .values(effective_to=when)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]

"""SQL for the audit log and its chain heads."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.kit.pagination import PageParams, keyset
from aihub.models import AuditChainHead, AuditLog


async def lock_head(session: AsyncSession, chain: int) -> AuditChainHead:
    stmt = select(AuditChainHead).where(AuditChainHead.chain == chain).with_for_update()
    return (await session.execute(stmt)).scalar_one()


async def advance_head(session: AsyncSession, chain: int, seq: int, digest: str) -> None:
    await session.execute(
        update(AuditChainHead).where(AuditChainHead.chain == chain).values(last_seq=seq, last_hash=digest)
    )


async def heads(session: AsyncSession) -> Sequence[AuditChainHead]:
    return (await session.execute(select(AuditChainHead).order_by(AuditChainHead.chain))).scalars().all()


async def chain_rows(session: AsyncSession, chain: int) -> AsyncIterator[AuditLog]:
    stmt = select(AuditLog).where(AuditLog.chain == chain).order_by(AuditLog.chain_seq)
    result = await session.stream_scalars(stmt.execution_options(yield_per=1000))
    async for row in result:
        yield row


def search(
    params: PageParams,
    *,
    actor_id: str | None,
    entity_type: str | None,
    entity_id: str | None,
    action: str | None,
    created_from: dt.datetime | None,
    created_to: dt.datetime | None,
) -> Select[Any]:
    stmt = select(AuditLog)
    filters: list[Any] = []
    if actor_id:
        filters.append(AuditLog.actor_id == actor_id)
    if entity_type:
        filters.append(AuditLog.entity_type == entity_type)
    if entity_id:
        filters.append(AuditLog.entity_id == entity_id)
    if action:
        filters.append(AuditLog.action == action)
    if created_from:
        filters.append(AuditLog.created_at >= created_from)
    if created_to:
        filters.append(AuditLog.created_at < created_to)
    if filters:
        stmt = stmt.where(*filters)
    return keyset(stmt, AuditLog.created_at, AuditLog.id, params)


async def fetch(session: AsyncSession, stmt: Select[Any]) -> Sequence[AuditLog]:
    rows: Sequence[AuditLog] = (await session.execute(stmt)).scalars().all()
    return rows


def new_id() -> uuid.UUID:
    return uuid.uuid4()

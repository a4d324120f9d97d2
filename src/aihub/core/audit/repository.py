"""SQL for the audit log and its chain heads."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import Select, bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.kit.db import JSONType, UTCDateTime
from aihub.kit.pagination import PageParams, keyset
from aihub.models import AuditChainHead, AuditLog

# PostgreSQL: move the chain head and insert the row it now points at, in one statement. The
# head's row lock serialises appends to a chain; SET reads the old values, so prev_hash gets
# the hash being replaced and last_hash the new link sha256("prev:seq:digest") (see
# service.link, which computes the same text in Python for verification and SQLite). ``digest``
# is the sha256 of ``content``, the canonical text stored with the row (hash v3).
_APPEND_PG = text(
    """
    WITH head AS (
        UPDATE audit_chain_heads
        SET prev_hash = last_hash,
            last_seq = last_seq + 1,
            last_hash = encode(sha256(convert_to(
                last_hash || ':' || (last_seq + 1)::text || ':' || CAST(:digest AS text), 'UTF8')), 'hex')
        WHERE chain = :chain
        RETURNING last_seq, prev_hash, last_hash
    )
    INSERT INTO audit_logs (id, chain, chain_seq, actor_id, actor_type, action, entity_type, entity_id,
                            before, after, request_id, ip, created_at, prev_hash, hash, hash_version, content)
    SELECT :id, :chain, head.last_seq, :actor_id, :actor_type, :action, :entity_type, :entity_id,
           :before, :after, :request_id, :ip, :created_at, head.prev_hash, head.last_hash, 3, :content
    FROM head
    """
).bindparams(
    bindparam("before", type_=JSONType),
    bindparam("after", type_=JSONType),
    bindparam("created_at", type_=UTCDateTime()),
)


async def lock_head(session: AsyncSession, chain: int) -> AuditChainHead:
    stmt = select(AuditChainHead).where(AuditChainHead.chain == chain).with_for_update()
    return (await session.execute(stmt)).scalar_one()


async def advance_head(session: AsyncSession, chain: int, seq: int, digest: str) -> None:
    await session.execute(
        update(AuditChainHead).where(AuditChainHead.chain == chain).values(last_seq=seq, last_hash=digest)
    )


async def append_linked(session: AsyncSession, row: AuditLog, digest: str) -> None:
    """PostgreSQL: append ``row`` (its content hashed to ``digest``) to its chain in one round trip."""
    await session.execute(
        _APPEND_PG,
        {
            "digest": digest,
            "chain": row.chain,
            "id": row.id,
            "actor_id": row.actor_id,
            "actor_type": row.actor_type,
            "action": row.action,
            "entity_type": row.entity_type,
            "entity_id": row.entity_id,
            "before": row.before,
            "after": row.after,
            "request_id": row.request_id,
            "ip": row.ip,
            "created_at": row.created_at,
            "content": row.content,
        },
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

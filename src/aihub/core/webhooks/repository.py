"""SQL of the webhook endpoints, their deliveries (the outbox) and attempts."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.kit.pagination import PageParams, keyset
from aihub.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

deliveries = cast(Table, WebhookDelivery.__table__)
attempts = cast(Table, WebhookAttempt.__table__)
endpoints = cast(Table, WebhookEndpoint.__table__)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery taken for one attempt, with where to send it and the key to sign it with."""

    id: uuid.UUID
    endpoint_id: uuid.UUID
    payload: str
    attempts: int
    created_at: dt.datetime
    url: str
    secret: str
    active: bool


async def get_endpoint(
    session: AsyncSession, endpoint_id: uuid.UUID, *, for_update: bool = False
) -> WebhookEndpoint | None:
    if not for_update:
        return await session.get(WebhookEndpoint, endpoint_id)
    return await session.get(WebhookEndpoint, endpoint_id, with_for_update=True, populate_existing=True)


async def list_endpoints(session: AsyncSession, params: PageParams) -> Sequence[WebhookEndpoint]:
    stmt = keyset(select(WebhookEndpoint), WebhookEndpoint.created_at, WebhookEndpoint.id, params)
    return list((await session.execute(stmt)).scalars().all())


async def active_endpoints(session: AsyncSession) -> Sequence[WebhookEndpoint]:
    # A handful of rows: subscriptions are filtered in Python (JSON containment differs by engine).
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.active.is_(True))
    return list((await session.execute(stmt)).scalars().all())


async def delete_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> bool:
    # Attempts and deliveries go first explicitly: SQLite enforces ON DELETE CASCADE only per
    # connection pragma, and being explicit costs nothing.
    ids = select(deliveries.c.id).where(deliveries.c.endpoint_id == endpoint_id)
    await session.execute(delete(attempts).where(attempts.c.delivery_id.in_(ids)))
    await session.execute(delete(deliveries).where(deliveries.c.endpoint_id == endpoint_id))
    result = await session.execute(delete(endpoints).where(endpoints.c.id == endpoint_id).returning(endpoints.c.id))
    return result.first() is not None


async def add_deliveries(session: AsyncSession, rows: Sequence[WebhookDelivery]) -> None:
    if rows:
        session.add_all(rows)
        await session.flush()


async def list_deliveries(
    session: AsyncSession, endpoint_id: uuid.UUID, params: PageParams
) -> Sequence[WebhookDelivery]:
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    stmt = keyset(stmt, WebhookDelivery.created_at, WebhookDelivery.id, params)
    return list((await session.execute(stmt)).scalars().all())


async def attempts_of(session: AsyncSession, delivery_ids: list[uuid.UUID]) -> Sequence[WebhookAttempt]:
    if not delivery_ids:
        return []
    stmt = (
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(delivery_ids))
        .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt)
    )
    return list((await session.execute(stmt)).scalars().all())


async def claim(
    session: AsyncSession, delivery_id: uuid.UUID, now: dt.datetime, lease_until: dt.datetime
) -> Claimed | None:
    """Take one due delivery for an attempt: one conditional UPDATE, so of two workers (the
    after-commit job and the retry sweep) only one sends it; the lease hides it from the rest
    until the attempt is recorded (or the worker died and the lease ran out)."""
    due = (
        update(deliveries)
        .where(deliveries.c.id == delivery_id, deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now)
        .values(attempts=deliveries.c.attempts + 1, next_attempt_at=lease_until)
        .returning(
            deliveries.c.id,
            deliveries.c.endpoint_id,
            deliveries.c.payload,
            deliveries.c.attempts,
            deliveries.c.created_at,
        )
    )
    row = (await session.execute(due)).first()
    if row is None:
        return None
    endpoint = (
        await session.execute(
            select(endpoints.c.url, endpoints.c.secret, endpoints.c.active).where(endpoints.c.id == row.endpoint_id)
        )
    ).first()
    if endpoint is None:
        return None
    return Claimed(
        id=row.id,
        endpoint_id=row.endpoint_id,
        payload=row.payload,
        attempts=int(row.attempts),
        created_at=row.created_at,
        url=endpoint.url,
        secret=endpoint.secret,
        active=endpoint.active,
    )


async def still_there(session: AsyncSession, delivery_id: uuid.UUID) -> bool:
    """Lock the delivery row (PostgreSQL), so an endpoint deleted meanwhile waits or is seen."""
    stmt = select(deliveries.c.id).where(deliveries.c.id == delivery_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).first() is not None


async def record_attempt(session: AsyncSession, attempt: WebhookAttempt) -> None:
    session.add(attempt)
    await session.flush()


async def finish(
    session: AsyncSession,
    delivery_id: uuid.UUID,
    *,
    status: str,
    next_attempt_at: dt.datetime,
    delivered_at: dt.datetime | None = None,
) -> None:
    stmt = (
        update(deliveries)
        .where(deliveries.c.id == delivery_id)
        .values(status=status, next_attempt_at=next_attempt_at, delivered_at=delivered_at)
    )
    await session.execute(stmt)


async def due(session: AsyncSession, now: dt.datetime, limit: int) -> list[uuid.UUID]:
    """Pending deliveries whose next attempt is due, of active endpoints, oldest first."""
    stmt = (
        select(deliveries.c.id)
        .join(endpoints, endpoints.c.id == deliveries.c.endpoint_id)
        .where(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now, endpoints.c.active.is_(True))
        .order_by(deliveries.c.next_attempt_at)
        .limit(limit)
    )
    return [row[0] for row in (await session.execute(stmt)).all()]

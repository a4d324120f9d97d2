"""SQL of credit packages, payments and provider events."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Select, Table, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.core.payments.schemas import PackageIn
from aihub.kit.pagination import PageParams, keyset
from aihub.models import CreditPackage, Payment, PaymentEvent

payments = cast(Table, Payment.__table__)
events = cast(Table, PaymentEvent.__table__)
packages = cast(Table, CreditPackage.__table__)


async def get_package(session: AsyncSession, package_id: str) -> CreditPackage | None:
    return await session.get(CreditPackage, package_id)


async def list_packages(session: AsyncSession, *, active_only: bool) -> Sequence[CreditPackage]:
    stmt = select(CreditPackage).order_by(CreditPackage.amount, CreditPackage.id)
    if active_only:
        stmt = stmt.where(CreditPackage.active.is_(True))
    return list((await session.execute(stmt)).scalars().all())


def _insert(session: AsyncSession) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def insert_package(session: AsyncSession, package_id: str, terms: PackageIn, now: dt.datetime) -> bool:
    """Create the package unless it exists (False then). Of two concurrent creators one inserts;
    the other waits on the key, inserts nothing and goes on to update the committed row."""
    values = {"id": package_id, **terms.model_dump(), "created_at": now, "updated_at": now}
    stmt = _insert(session)(packages).values(**values).on_conflict_do_nothing(index_elements=["id"])
    return (await session.execute(stmt.returning(packages.c.id))).first() is not None


async def get_package_for_update(session: AsyncSession, package_id: str) -> CreditPackage | None:
    stmt = select(CreditPackage).where(CreditPackage.id == package_id).with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def delete_package(session: AsyncSession, package_id: str) -> bool:
    result = await session.execute(delete(packages).where(packages.c.id == package_id).returning(packages.c.id))
    return result.first() is not None


async def get_payment(session: AsyncSession, payment_id: uuid.UUID) -> Payment | None:
    return await session.get(Payment, payment_id)


async def by_session(
    session: AsyncSession, provider: str, session_id: str, *, for_update: bool = False
) -> Payment | None:
    stmt = select(Payment).where(Payment.provider == provider, Payment.provider_session_id == session_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def by_provider_payment(
    session: AsyncSession, provider: str, provider_payment_id: str, *, for_update: bool = False
) -> Payment | None:
    """The payment of a provider charge (Stripe: its PaymentIntent). Locked with ``for_update``
    so that concurrent refund events of one payment queue and each sees the one before."""
    stmt = select(Payment).where(Payment.provider == provider, Payment.provider_payment_id == provider_payment_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def record_event(
    session: AsyncSession, provider: str, event_id: str, kind: str, payload: dict[str, object], now: dt.datetime
) -> bool:
    """Insert the event once (outcome ``received``); False when it was already recorded (a
    redelivery).

    On PostgreSQL a concurrent delivery of the same event waits on the key until the first
    transaction ends, then finds the row and inserts nothing.
    """
    values = {
        "provider": provider,
        "event_id": event_id,
        "type": kind,
        "outcome": "received",
        "payment_id": None,
        "payload": payload,
        "received_at": now,
    }
    stmt = _insert(session)(events).values(**values).on_conflict_do_nothing(index_elements=["provider", "event_id"])
    result = await session.execute(stmt.returning(events.c.event_id))
    return result.first() is not None


async def set_event_outcome(
    session: AsyncSession, provider: str, event_id: str, outcome: str, payment_id: uuid.UUID | None
) -> None:
    stmt = (
        update(events)
        .where(events.c.provider == provider, events.c.event_id == event_id)
        .values(outcome=outcome, payment_id=payment_id)
    )
    await session.execute(stmt)


async def mark_paid(
    session: AsyncSession, payment_id: uuid.UUID, provider_payment_id: str | None, now: dt.datetime
) -> bool:
    """pending → paid, once: of any number of concurrent deliveries only one gets True."""
    stmt = (
        update(payments)
        .where(payments.c.id == payment_id, payments.c.status == "pending")
        .values(status="paid", provider_payment_id=provider_payment_id, paid_at=now, updated_at=now)
        .returning(payments.c.id)
    )
    return (await session.execute(stmt)).first() is not None


async def mark_failed(session: AsyncSession, payment_id: uuid.UUID, now: dt.datetime) -> bool:
    stmt = (
        update(payments)
        .where(payments.c.id == payment_id, payments.c.status == "pending")
        .values(status="failed", updated_at=now)
        .returning(payments.c.id)
    )
    return (await session.execute(stmt)).first() is not None


async def update_payment(session: AsyncSession, payment_id: uuid.UUID, **values: Any) -> None:
    await session.execute(update(payments).where(payments.c.id == payment_id).values(**values))


def search(
    params: PageParams,
    *,
    user_id: uuid.UUID | None,
    status: str | None,
    package_id: str | None,
    created_from: dt.datetime | None,
    created_to: dt.datetime | None,
) -> Select[Any]:
    stmt = select(Payment)
    if user_id is not None:
        stmt = stmt.where(Payment.user_id == user_id)
    if status is not None:
        stmt = stmt.where(Payment.status == status)
    if package_id is not None:
        stmt = stmt.where(Payment.package_id == package_id)
    if created_from is not None:
        stmt = stmt.where(Payment.created_at >= created_from)
    if created_to is not None:
        stmt = stmt.where(Payment.created_at < created_to)
    return keyset(stmt, Payment.created_at, Payment.id, params)


async def fetch(session: AsyncSession, stmt: Select[Any]) -> Sequence[Payment]:
    return list((await session.execute(stmt)).scalars().all())


async def purchases(
    session: AsyncSession, user_id: uuid.UUID | None, start: dt.datetime | None, end: dt.datetime | None
) -> Sequence[Payment]:
    """Paid (or later refunded) payments in a period, by the time they were paid; one user's
    or (None) everyone's."""
    stmt = select(Payment).where(Payment.status.in_(("paid", "refunded")))
    if user_id is not None:
        stmt = stmt.where(Payment.user_id == user_id)
    if start is not None:
        stmt = stmt.where(Payment.paid_at >= start)
    if end is not None:
        stmt = stmt.where(Payment.paid_at < end)
    return list((await session.execute(stmt.order_by(Payment.paid_at, Payment.id))).scalars().all())

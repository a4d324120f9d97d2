"""SQL of the ledger. Every balance change is ONE conditional UPDATE … RETURNING; no read-check-write.

Statements are SQLAlchemy Core on the tables (not ORM units of work): one round trip each,
and the same SQL on PostgreSQL and SQLite (≥ 3.35 for RETURNING).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Select, Table, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.kit.db import dialect_of
from aihub.kit.jsonutil import dumps
from aihub.kit.pagination import PageParams, keyset
from aihub.models import CreditAccount, CreditHold, CreditTransaction

accounts = cast(Table, CreditAccount.__table__)
ledger = cast(Table, CreditTransaction.__table__)
holds = cast(Table, CreditHold.__table__)
# SQLAlchemy 2.1 types rows by their column types; these statements return ad-hoc shapes.
AnyRow = Any


@dataclass(frozen=True, slots=True)
class Balance:
    """An account as one statement left it."""

    user_id: uuid.UUID
    balance: int
    reserved: int
    threshold: int | None = None

    @property
    def available(self) -> int:
        return self.balance - self.reserved


@dataclass(frozen=True, slots=True)
class Change:
    """A balance change asked for (``amount`` signed), as its ledger row will record it."""

    id: uuid.UUID
    user_id: uuid.UUID
    amount: int
    reason: str
    created_at: dt.datetime
    related_id: uuid.UUID | None = None
    idempotency_key: str | None = None
    metadata: dict[str, Any] | None = None
    actor_id: str | None = None

    @property
    def type(self) -> str:
        return "credit" if self.amount > 0 else "debit"

    def entry(self, balance_after: int) -> Entry:
        return Entry(
            self.id,
            self.user_id,
            self.amount,
            self.type,
            self.reason,
            balance_after,
            self.related_id,
            self.idempotency_key,
            self.metadata,
            self.created_at,
        )

    def values(self) -> dict[str, object]:
        """The ledger row's columns but ``balance_after`` (what the move leaves)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "amount": self.amount,
            "type": self.type,
            "reason": self.reason,
            "related_id": self.related_id,
            "idempotency_key": self.idempotency_key,
            "metadata": self.metadata,
            "actor_id": self.actor_id,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class Entry:
    """A ledger row as the transaction schema reads it (the ORM row calls ``metadata`` ``meta``)."""

    id: uuid.UUID
    user_id: uuid.UUID
    amount: int
    type: str
    reason: str
    balance_after: int
    related_id: uuid.UUID | None
    idempotency_key: str | None
    metadata: dict[str, Any] | None
    created_at: dt.datetime

    @property
    def account_id(self) -> uuid.UUID:
        return self.user_id


@dataclass(frozen=True, slots=True)
class HoldState:
    """A hold as one change left it (the hold schema reads it)."""

    id: uuid.UUID
    user_id: uuid.UUID
    amount: int
    captured: int | None
    status: str
    reason: str
    metadata: dict[str, Any] | None
    expires_at: dt.datetime
    created_at: dt.datetime
    resolved_at: dt.datetime | None


def _balance(user_id: uuid.UUID, row: AnyRow | None) -> Balance | None:
    if row is None:
        return None
    return Balance(user_id, int(row.balance), int(row.reserved), row.low_balance_threshold)


_RETURNING = (accounts.c.balance, accounts.c.reserved, accounts.c.low_balance_threshold)


async def get_account(session: AsyncSession, user_id: uuid.UUID) -> Balance | None:
    stmt = select(*_RETURNING).where(accounts.c.user_id == user_id)
    return _balance(user_id, (await session.execute(stmt)).first())


async def set_threshold(session: AsyncSession, user_id: uuid.UUID, threshold: int | None) -> bool:
    """Set the account's low-balance pre-filter (not money: no ledger row); False: no account."""
    stmt = (
        update(accounts)
        .where(accounts.c.user_id == user_id)
        .values(low_balance_threshold=threshold)
        .returning(accounts.c.user_id)
    )
    return (await session.execute(stmt)).first() is not None


async def credit(session: AsyncSession, user_id: uuid.UUID, amount: int, now: dt.datetime) -> Balance | None:
    """Add credits; None when there is no such account."""
    stmt = (
        update(accounts)
        .where(accounts.c.user_id == user_id)
        .values(balance=accounts.c.balance + amount, updated_at=now)
        .returning(*_RETURNING)
    )
    return _balance(user_id, (await session.execute(stmt)).first())


async def debit(session: AsyncSession, user_id: uuid.UUID, amount: int, now: dt.datetime) -> Balance | None:
    """Take credits only if that many are available (not held); None when not."""
    stmt = (
        update(accounts)
        .where(accounts.c.user_id == user_id, accounts.c.balance - accounts.c.reserved >= amount)
        .values(balance=accounts.c.balance - amount, updated_at=now)
        .returning(*_RETURNING)
    )
    return _balance(user_id, (await session.execute(stmt)).first())


async def reserve(session: AsyncSession, user_id: uuid.UUID, amount: int, now: dt.datetime) -> Balance | None:
    """Put credits on hold only if that many are available; None when not."""
    stmt = (
        update(accounts)
        .where(accounts.c.user_id == user_id, accounts.c.balance - accounts.c.reserved >= amount)
        .values(reserved=accounts.c.reserved + amount, updated_at=now)
        .returning(*_RETURNING)
    )
    return _balance(user_id, (await session.execute(stmt)).first())


async def settle(session: AsyncSession, user_id: uuid.UUID, *, held: int, charged: int, now: dt.datetime) -> Balance:
    """Resolve a hold: un-reserve all it held and take what was charged (≤ held), in one statement.

    Cannot fail while the schema holds: the hold's amount is part of ``reserved`` and
    ``reserved <= balance``, so ``balance - charged >= reserved - held``.
    """
    stmt = (
        update(accounts)
        .where(accounts.c.user_id == user_id)
        .values(balance=accounts.c.balance - charged, reserved=accounts.c.reserved - held, updated_at=now)
        .returning(*_RETURNING)
    )
    result = _balance(user_id, (await session.execute(stmt)).first())
    assert result is not None, "a hold always belongs to an existing account"
    return result


# PostgreSQL: the conditional UPDATE and its ledger row in ONE statement (one round trip).
# The INSERT reads the row the UPDATE returned, so it only happens when the money moved, and
# its seq is drawn while the account row is locked: seq order is balance order.
_MOVE_PG = """
WITH moved AS (
    UPDATE credit_accounts
    SET balance = balance + CAST(:amount AS bigint), updated_at = CAST(:created_at AS timestamptz)
    WHERE user_id = CAST(:user_id AS uuid) {guard}
    RETURNING user_id, balance, reserved, low_balance_threshold
), logged AS (
    INSERT INTO credit_transactions
        (id, user_id, amount, type, reason, balance_after, related_id, idempotency_key, metadata,
         actor_id, created_at)
    SELECT CAST(:id AS uuid), user_id, CAST(:amount AS bigint), :type, :reason, balance,
           CAST(:related_id AS uuid), :idempotency_key, CAST(:metadata AS jsonb), :actor_id,
           CAST(:created_at AS timestamptz)
    FROM moved
    RETURNING seq
)
SELECT moved.balance, moved.reserved, moved.low_balance_threshold FROM moved, logged
"""
_MOVE_CREDIT_PG = text(_MOVE_PG.format(guard=""))
_MOVE_DEBIT_PG = text(_MOVE_PG.format(guard="AND balance - reserved >= -CAST(:amount AS bigint)"))


async def move(session: AsyncSession, change: Change) -> Balance | None:
    """Apply ``change.amount`` (signed) to the account and append its ledger row.

    A debit only happens if that many credits are available. None when nothing moved
    (no such account, or not enough available).
    """
    if dialect_of(session) == "postgresql":
        params = change.values()
        params["metadata"] = None if change.metadata is None else dumps(change.metadata).decode()
        stmt = _MOVE_CREDIT_PG if change.amount > 0 else _MOVE_DEBIT_PG
        return _balance(change.user_id, (await session.execute(stmt, params)).first())
    # SQLite has no data-modifying CTEs; one writer at a time makes two statements as safe.
    user_id, amount, now = change.user_id, change.amount, change.created_at
    after = await credit(session, user_id, amount, now) if amount > 0 else await debit(session, user_id, -amount, now)
    if after is not None:
        await append(session, change, after.balance)
    return after


async def append(session: AsyncSession, change: Change, balance_after: int) -> None:
    """Insert one ledger row (after its balance change, so ``seq`` follows the balance)."""
    await session.execute(insert(ledger).values(**change.values(), balance_after=balance_after))


async def get_transaction(
    session: AsyncSession, transaction_id: uuid.UUID, *, for_update: bool = False
) -> CreditTransaction | None:
    stmt = select(CreditTransaction).where(CreditTransaction.id == transaction_id)
    if for_update:
        # Serialises refunds of one debit; SELECT … FOR UPDATE is not an UPDATE, so the
        # append-only trigger does not fire. SQLite ignores it (one writer anyway).
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def refunded_total(session: AsyncSession, debit_id: uuid.UUID) -> int:
    stmt = select(func.coalesce(func.sum(ledger.c.amount), 0)).where(
        ledger.c.related_id == debit_id, ledger.c.reason == "refund"
    )
    return int((await session.execute(stmt)).scalar_one())


def search(
    user_id: uuid.UUID,
    params: PageParams,
    *,
    reason: str | None,
    created_from: dt.datetime | None,
    created_to: dt.datetime | None,
) -> Select[Any]:
    stmt = select(CreditTransaction).where(CreditTransaction.user_id == user_id)
    if reason is not None:
        stmt = stmt.where(CreditTransaction.reason == reason)
    if created_from is not None:
        stmt = stmt.where(CreditTransaction.created_at >= created_from)
    if created_to is not None:
        stmt = stmt.where(CreditTransaction.created_at < created_to)
    return keyset(stmt, CreditTransaction.created_at, CreditTransaction.id, params)


async def fetch(session: AsyncSession, stmt: Select[Any]) -> Sequence[CreditTransaction]:
    return list((await session.execute(stmt)).scalars().all())


# ------------------------------------------------------------------------------ holds


async def add_hold(session: AsyncSession, hold: HoldState) -> None:
    values = {column.name: getattr(hold, column.name) for column in holds.c}
    await session.execute(insert(holds).values(**values))


async def get_hold(session: AsyncSession, hold_id: uuid.UUID) -> CreditHold | None:
    return (await session.execute(select(CreditHold).where(CreditHold.id == hold_id))).scalar_one_or_none()


async def resolve_hold(
    session: AsyncSession,
    hold_id: uuid.UUID,
    *,
    status: str,
    now: dt.datetime,
    charge: int | None = None,
) -> HoldState | None:
    """Move an active, unexpired hold to its final status, once: None if it is not active.

    The ``status = 'held'`` condition makes this the single point where a hold resolves:
    of two concurrent captures (or a capture and a release, or a sweep), one wins. A capture
    of ``charge`` (None: all of it) also requires ``charge <= amount``.
    """
    conditions = [holds.c.id == hold_id, holds.c.status == "held", holds.c.expires_at > now]
    captured: Any = None
    if status == "captured":
        captured = holds.c.amount if charge is None else charge
        if charge is not None:
            conditions.append(holds.c.amount >= charge)
    stmt = (
        update(holds).where(*conditions).values(status=status, resolved_at=now, captured=captured).returning(*holds.c)
    )
    row = (await session.execute(stmt)).first()
    return None if row is None else HoldState(**row._mapping)


async def expire_holds(session: AsyncSession, now: dt.datetime, limit: int) -> Sequence[AnyRow]:
    """Expire up to ``limit`` overdue holds; safe with several sweepers at once.

    PostgreSQL: the candidates are locked with SKIP LOCKED, so concurrent sweepers take
    disjoint batches, and the outer ``status = 'held'`` is re-checked after any wait, so a
    hold being captured right now is never also expired.
    """
    candidates = (
        select(holds.c.id)
        .where(holds.c.status == "held", holds.c.expires_at <= now)
        .order_by(holds.c.expires_at)
        .limit(limit)
    )
    if dialect_of(session) == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    stmt = (
        update(holds)
        .where(holds.c.id.in_(candidates.scalar_subquery()), holds.c.status == "held")
        .values(status="expired", resolved_at=now)
        .returning(holds.c.id, holds.c.user_id, holds.c.amount)
    )
    return (await session.execute(stmt)).all()


async def overdue_holds(session: AsyncSession, now: dt.datetime, limit: int) -> Sequence[AnyRow]:
    """Up to ``limit`` overdue holds (id, owner), unlocked: the ledger engine expires each one
    under its own locks, re-checking that it is still held and overdue."""
    stmt = (
        select(holds.c.id, holds.c.user_id)
        .where(holds.c.status == "held", holds.c.expires_at <= now)
        .order_by(holds.c.expires_at)
        .limit(limit)
    )
    return (await session.execute(stmt)).all()


# -------------------------------------------------------------------------- reconcile


async def all_accounts(session: AsyncSession) -> Sequence[AnyRow]:
    stmt = select(accounts.c.user_id, accounts.c.balance, accounts.c.reserved).order_by(accounts.c.user_id)
    return (await session.execute(stmt)).all()


async def ledger_rows(session: AsyncSession) -> Sequence[AnyRow]:
    """Every ledger row in (account, seq) order: the order its balance moved."""
    stmt = select(ledger.c.user_id, ledger.c.seq, ledger.c.id, ledger.c.amount, ledger.c.balance_after)
    return (await session.execute(stmt.order_by(ledger.c.user_id, ledger.c.seq))).all()


async def active_hold_totals(session: AsyncSession) -> dict[uuid.UUID, int]:
    stmt = select(holds.c.user_id, func.sum(holds.c.amount)).where(holds.c.status == "held").group_by(holds.c.user_id)
    return {row[0]: int(row[1]) for row in (await session.execute(stmt)).all()}

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aihub.kit.db import Base, JSONType, UTCDateTime, utcnow

# SQLite only auto-numbers an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class CreditAccount(Base):
    """One per user. Balances only ever change through one conditional UPDATE (the ledger)."""

    __tablename__ = "credit_accounts"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="ck_credit_accounts_balance_nonneg"),
        CheckConstraint("reserved >= 0", name="ck_credit_accounts_reserved_nonneg"),
        CheckConstraint("reserved <= balance", name="ck_credit_accounts_reserved_le_balance"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="RESTRICT"), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    # Per-account override of the global low-balance threshold (None: use the setting).
    low_balance_threshold: Mapped[int | None] = mapped_column(BigInteger, nullable=True, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class CreditTransaction(Base):
    """Append-only ledger row. ``seq`` orders an account's rows the way its balance moved.

    The row is inserted after the account's conditional UPDATE in the same transaction, so
    the account row lock (PostgreSQL) or the single writer (SQLite) serialises the ``seq``
    values of one account in balance order: ``balance_after`` chains along ``seq``.
    """

    __tablename__ = "credit_transactions"
    __table_args__ = (
        CheckConstraint("type IN ('credit', 'debit')", name="ck_credit_tx_type"),
        CheckConstraint(
            "(type = 'credit' AND amount > 0) OR (type = 'debit' AND amount < 0)", name="ck_credit_tx_sign"
        ),
        CheckConstraint("balance_after >= 0", name="ck_credit_tx_balance_after"),
        Index("uq_credit_tx_id", "id", unique=True),
        Index("ix_credit_tx_user_created", "user_id", "created_at", "id"),
        Index("ix_credit_tx_user_seq", "user_id", "seq"),
        Index("ix_credit_tx_related", "related_id"),
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("credit_accounts.user_id", ondelete="RESTRICT"))
    amount: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(16))
    balance_after: Mapped[int] = mapped_column(BigInteger)
    # The debit a refund refers to, or the hold a capture settles.
    related_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType, nullable=True)
    actor_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class CreditHold(Base):
    """A pending debit: it reserves credits until captured (fully or partly), released or expired."""

    __tablename__ = "credit_holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="ck_credit_holds_amount"),
        CheckConstraint("status IN ('held', 'captured', 'released', 'expired')", name="ck_credit_holds_status"),
        Index("ix_credit_holds_status_expiry", "status", "expires_at"),
        Index("ix_credit_holds_user", "user_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("credit_accounts.user_id", ondelete="RESTRICT"))
    amount: Mapped[int] = mapped_column(BigInteger)
    captured: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="held")
    reason: Mapped[str] = mapped_column(String(16))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType, nullable=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

"""Credit packages sold through a payment provider, the payments made, the provider events seen."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aihub.kit.db import Base, JSONType, UTCDateTime, utcnow


class CreditPackage(Base):
    """What a checkout sells: ``credits`` for ``amount`` minor units of ``currency``."""

    __tablename__ = "credit_packages"
    __table_args__ = (
        CheckConstraint("credits > 0", name="ck_credit_packages_credits"),
        CheckConstraint("amount > 0", name="ck_credit_packages_amount"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    credits: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Payment(Base):
    """One checkout and what became of it.

    ``credits``, ``amount`` and ``currency`` are a snapshot taken at checkout: a package edited
    while the customer pays does not change what they bought. ``provider_session_id`` is
    unique, so one paid session can only ever be matched to one payment.
    """

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'paid', 'refunded', 'failed')", name="ck_payments_status"),
        CheckConstraint("refunded_credits >= 0 AND refunded_credits <= credits", name="ck_payments_refunded"),
        Index("uq_payments_provider_session", "provider", "provider_session_id", unique=True),
        Index("ix_payments_provider_intent", "provider", "provider_payment_id"),
        Index("ix_payments_user_created", "user_id", "created_at", "id"),
        Index("ix_payments_created", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="RESTRICT"))
    provider: Mapped[str] = mapped_column(String(16))
    package_id: Mapped[str] = mapped_column(String(64))
    credits: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    provider_session_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    provider_payment_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    checkout_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    refunded_credits: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    # Credits a refund should have taken back but the account no longer held (already spent).
    refund_shortfall: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    paid_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PaymentEvent(Base):
    """A provider event, recorded once: its id is the first idempotency guard of the webhook."""

    __tablename__ = "payment_events"

    provider: Mapped[str] = mapped_column(String(16), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(32))
    payment_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

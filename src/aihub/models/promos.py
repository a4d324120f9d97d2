from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aihub.kit.db import Base, UTCDateTime, utcnow


class PromoCode(Base):
    """A code worth ``credits``; ``redeemed_count`` and ``credits_granted`` move only in the redeem UPDATE."""

    __tablename__ = "promo_codes"
    __table_args__ = (
        CheckConstraint("credits > 0", name="ck_promo_codes_credits"),
        CheckConstraint("per_user_limit >= 1", name="ck_promo_codes_per_user"),
        CheckConstraint("redeemed_count >= 0 AND credits_granted >= 0", name="ck_promo_codes_stats"),
        # The backstop of "exactly maxRedemptions": no statement can push the count past it.
        CheckConstraint("max_redemptions IS NULL OR redeemed_count <= max_redemptions", name="ck_promo_codes_max"),
        Index("ix_promo_codes_created", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    code: Mapped[str] = mapped_column(String(64), unique=True)  # normalised: upper case, trimmed
    credits: Mapped[int] = mapped_column(BigInteger)
    max_redemptions: Mapped[int | None] = mapped_column(BigInteger)
    per_user_limit: Mapped[int] = mapped_column(Integer, default=1)
    starts_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str | None] = mapped_column(String(500))
    created_by: Mapped[str | None] = mapped_column(String(64))
    redeemed_count: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_granted: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PromoUserCount(Base):
    """How often one user redeemed one code: the conditional upsert on this row enforces perUserLimit."""

    __tablename__ = "promo_user_counts"

    promo_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("promo_codes.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)


class PromoRedemption(Base):
    """One successful redemption; ``seq`` is the user's n-th use of the code (unique: a second backstop)."""

    __tablename__ = "promo_redemptions"
    __table_args__ = (
        UniqueConstraint("promo_id", "user_id", "seq", name="uq_promo_redemptions_user_seq"),
        Index("ix_promo_redemptions_promo_created", "promo_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    promo_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("promo_codes.id", ondelete="RESTRICT"))
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="RESTRICT"))
    seq: Mapped[int] = mapped_column(Integer)
    credits: Mapped[int] = mapped_column(BigInteger)
    transaction_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

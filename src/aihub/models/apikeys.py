"""API keys, their budget counters, and pre-call usage authorizations."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aihub.kit.db import Base, JSONType, UTCDateTime, utcnow


class ApiKey(Base):
    """A long-lived credential of one user. Only the SHA-256 of the whole key is kept: the
    key has ≥ 190 random bits, so a fast hash is as good as a slow one and costs nothing per
    request. ``prefix`` is public (it is shown in listings) and finds the row."""

    __tablename__ = "api_keys"
    __table_args__ = (
        Index("ix_api_keys_user_created", "user_id", "created_at"),
        CheckConstraint("budget_max_credits IS NULL OR budget_max_credits >= 0", name="ck_api_keys_budget"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    models: Mapped[list[str] | None] = mapped_column(JSONType)
    allowed_ips: Mapped[list[str] | None] = mapped_column(JSONType)
    requests_per_minute: Mapped[int | None] = mapped_column(BigInteger)
    tokens_per_minute: Mapped[int | None] = mapped_column(BigInteger)
    budget_max_credits: Mapped[int | None] = mapped_column(BigInteger)
    budget_period: Mapped[str | None] = mapped_column(String(8))
    created_by: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKeyCounter(Base):
    """What a key has reserved or spent in one period: credits against its budget
    (``d:2026-12-01``, ``m:2026-12``, ``t``) and tokens against its tokens per minute
    (``tm:2026-12-01T10:15``). Changed only by one conditional upsert."""

    __tablename__ = "api_key_counters"
    __table_args__ = (CheckConstraint("credits >= 0 AND tokens >= 0", name="ck_api_key_counters_nonneg"),)

    key_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    period_key: Mapped[str] = mapped_column(String(24), primary_key=True)
    credits: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageAuthorization(Base):
    """A pre-call reservation: a credit hold plus reservations on quota and key counters,
    resolved once (settled, cancelled or expired)."""

    __tablename__ = "usage_authorizations"
    __table_args__ = (
        Index("ix_usage_authorizations_active_expiry", "status", "expires_at"),
        Index("ix_usage_authorizations_user_created", "user_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="RESTRICT"))
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("api_keys.id", ondelete="SET NULL"))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    max_input_tokens: Mapped[int] = mapped_column(BigInteger)
    max_output_tokens: Mapped[int] = mapped_column(BigInteger)
    held_credits: Mapped[int] = mapped_column(BigInteger)
    hold_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # What was reserved where, so settle, cancel and expiry give back exactly that:
    # {"quota": [[period_key, credits, tokens]], "key": [[period_key, credits, tokens]]}
    reservations: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(12))
    usage_event_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_by: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

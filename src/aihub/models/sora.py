from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aihub.kit.db import Base, ExactDecimal, UTCDateTime, utcnow


class SoraSession(Base):
    """A token the user pastes into the video tool. Only its SHA-256 is stored."""

    __tablename__ = "sora_sessions"
    __table_args__ = (Index("ix_sora_sessions_user", "user_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class SoraGeneration(Base):
    """One video job: credits are held at start, captured on completion, released on failure."""

    __tablename__ = "sora_generations"
    __table_args__ = (
        Index("ix_sora_generations_user", "user_id", "created_at"),
        Index("ix_sora_generations_pending", "status", "expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="RESTRICT"))
    session_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("sora_sessions.id", ondelete="CASCADE"))
    hold_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    duration_seconds: Mapped[Decimal] = mapped_column(ExactDecimal())
    resolution: Mapped[str] = mapped_column(String(8))
    prompt: Mapped[str | None] = mapped_column(Text)
    cost: Mapped[int] = mapped_column(BigInteger)
    charged: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(12), default="pending")
    failure_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

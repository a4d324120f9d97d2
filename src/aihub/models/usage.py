from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Column, Date, ForeignKey, Index, Integer, String, Table, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aihub.kit.db import Base, ExactDecimal, JSONType, UTCDateTime, utcnow


class UsageEvent(Base):
    """One priced LLM (or video) call. ``request_id`` makes reporting idempotent."""

    __tablename__ = "usage_events"
    __table_args__ = (
        Index("ix_usage_user_created", "user_id", "created_at"),
        Index("ix_usage_created", "created_at", "id"),
        Index("ix_usage_model_created", "provider", "model", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="RESTRICT"))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    price_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("model_prices.id", ondelete="RESTRICT"))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_seconds: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    credits: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int | None] = mapped_column(BigInteger)
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    reporter_id: Mapped[str | None] = mapped_column(String(64))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Quota(Base):
    """Single-limit quotas as kept before 0016_api_keys, which copied them into ``quota_limits``;
    no longer read or written (kept so the migration can be downgraded)."""

    __tablename__ = "quotas"

    scope: Mapped[str] = mapped_column(String(80), primary_key=True)
    period: Mapped[str] = mapped_column(String(8))
    max_credits: Mapped[int | None] = mapped_column(BigInteger)
    max_tokens: Mapped[int | None] = mapped_column(BigInteger)
    max_requests: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class QuotaLimit(Base):
    """One limit of a scope (``role:<name>``, ``user:<id>``, ``key:<id>``); every limit that
    applies to a call is enforced at once."""

    __tablename__ = "quota_limits"

    scope: Mapped[str] = mapped_column(String(80), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    period: Mapped[str] = mapped_column(String(8))  # minute | hour | day | week | month
    model: Mapped[str] = mapped_column(String(200), default="")  # "" = every model, else provider/model
    max_credits: Mapped[int | None] = mapped_column(BigInteger)
    max_tokens: Mapped[int | None] = mapped_column(BigInteger)
    max_requests: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageCounter(Base):
    """Usage of one subject (``u:<user id>`` or ``k:<key id>``) in one period, over every model
    (``model`` "") or one ``provider/model``; kept for every call, quota or not."""

    __tablename__ = "usage_counters"
    __table_args__ = (Index("ix_usage_counters_end", "period_end"),)

    subject: Mapped[str] = mapped_column(String(48), primary_key=True)
    period_key: Mapped[str] = mapped_column(String(24), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    credits: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    period_end: Mapped[dt.datetime] = mapped_column(UTCDateTime)


# The quota periods, shortest first: a ``usage_windows`` row has the columns of each.
WINDOW_PERIODS = ("minute", "hour", "day", "week", "month")
WINDOW_FIELDS = ("credits", "tokens", "requests")


def _window_columns() -> list[Column[Any]]:
    """Per period: the current window's key and amounts, and the ``out_`` columns an upsert that
    rolls the window fills with the window it replaced (else NULL), so the writer can keep that
    one in ``usage_counters`` (RETURNING only shows the row after the update)."""
    columns: list[Column[Any]] = []
    for period in WINDOW_PERIODS:
        columns.append(Column(f"{period}_key", String(24), nullable=False))
        columns.extend(Column(f"{period}_{f}", BigInteger, nullable=False) for f in WINDOW_FIELDS)
        columns.append(Column(f"{period}_out_key", String(24)))
        columns.extend(Column(f"{period}_out_{f}", BigInteger) for f in WINDOW_FIELDS)
    return columns


usage_windows = Table(
    "usage_windows",
    Base.metadata,
    Column("subject", String(48), primary_key=True),
    Column("model", String(200), primary_key=True),
    *_window_columns(),
    Column("ends_at", UTCDateTime, nullable=False),
    Index("ix_usage_windows_end", "ends_at"),
)


class UsageWindow(Base):
    """Usage of one subject (``u:<user id>`` or ``k:<key id>``) over every model (``model`` "")
    or one ``provider/model``, in the current window of every period at once: one row to upsert
    per call instead of one per period. A window's total is this row's amounts while its key is
    the row's, plus its ``usage_counters`` row (increments that arrived after the row had moved
    past their window, the windows the row rolled out, counters from before 0017).
    ``ends_at`` is the latest end of its windows (the purge drops the row days after it)."""

    __table__ = usage_windows


class QuotaCounter(Base):
    """The counters of the single-limit quotas before 0016_api_keys (``usage_counters`` replaced
    them); no longer read or written."""

    __tablename__ = "quota_counters"

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    period_key: Mapped[str] = mapped_column(String(16), primary_key=True)
    credits: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)


class _RollupMeasures:
    """What both rollup tables add up per key."""

    requests: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    credits: Mapped[int] = mapped_column(BigInteger)


class UsageDailyRollup(_RollupMeasures, Base):
    """Usage of one UTC day x user x provider x model, recomputed from ``usage_events``."""

    __tablename__ = "usage_daily_rollups"
    __table_args__ = (Index("ix_usage_rollup_user_day", "user_id", "day"),)

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)


class UsageDailyModelRollup(_RollupMeasures, Base):
    """Usage of one UTC day x provider x model (all users): what the overview's totals read."""

    __tablename__ = "usage_daily_model_rollups"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)


class UsageRollupState(Base):
    """Every day before ``complete_until`` is complete in the rollups (readers trust only those)."""

    __tablename__ = "usage_rollup_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    complete_until: Mapped[dt.date | None] = mapped_column(Date)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

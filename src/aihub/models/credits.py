from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aihub.kit.db import Base, UTCDateTime, utcnow


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
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

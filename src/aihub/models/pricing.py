from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import Index, String, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from aihub.kit.db import Base, ExactDecimal, UTCDateTime, utcnow

PRICE = ExactDecimal()


class ModelPrice(Base):
    """A price of one provider's model, valid from ``effective_from`` until ``effective_to``.

    Changing a price closes the current row and opens a new one, so past usage keeps pointing
    at the price it was charged at. At most one open row per (provider, model).
    """

    __tablename__ = "model_prices"
    __table_args__ = (
        Index(
            "uq_model_prices_current",
            "provider",
            "model",
            unique=True,
            postgresql_where=text("effective_to IS NULL"),
            sqlite_where=text("effective_to IS NULL"),
        ),
        Index("ix_model_prices_lookup", "provider", "model", "effective_from"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    input_per_1k: Mapped[Decimal] = mapped_column(PRICE)
    output_per_1k: Mapped[Decimal] = mapped_column(PRICE)
    per_request: Mapped[Decimal] = mapped_column(PRICE, default=Decimal(0))
    per_second: Mapped[Decimal] = mapped_column(PRICE, default=Decimal(0))
    effective_from: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    effective_to: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(64))

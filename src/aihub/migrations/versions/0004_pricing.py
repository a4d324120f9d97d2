"""Pricing: model prices with history, seeded with realistic rows.

Credits: 1 credit = USD 0.001 (a tenth of a cent). So a model at USD 2.50 per million input
tokens costs 2.5 credits per 1,000 input tokens.

Revision ID: 0004_pricing
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import sqlalchemy as sa
from alembic import op

revision = "0004_pricing"
down_revision = "0001"
branch_labels = None
depends_on = None

PRICE = sa.Numeric(18, 6)

# (provider, model, input per 1k, output per 1k, per request, per second), in credits.
SEED = [
    ("openai", "gpt-4o", "2.5", "10", "0", "0"),
    ("openai", "gpt-4o-mini", "0.15", "0.6", "0", "0"),
    ("openai", "gpt-4.1", "2", "8", "0", "0"),
    ("openai", "gpt-4.1-mini", "0.4", "1.6", "0", "0"),
    ("openai", "o3", "2", "8", "0", "0"),
    ("openai", "o4-mini", "1.1", "4.4", "0", "0"),
    ("openai", "sora2", "0", "0", "0", "100"),
    ("anthropic", "claude-opus-4", "15", "75", "0", "0"),
    ("anthropic", "claude-sonnet-4", "3", "15", "0", "0"),
    ("anthropic", "claude-3-5-haiku", "0.8", "4", "0", "0"),
    ("google", "gemini-2.5-pro", "1.25", "10", "0", "0"),
    ("google", "gemini-2.5-flash", "0.3", "2.5", "0", "0"),
    ("google", "gemini-2.0-flash", "0.1", "0.4", "0", "0"),
]


def upgrade() -> None:
    prices = op.create_table(
        "model_prices",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("input_per_1k", PRICE, nullable=False),
        sa.Column("output_per_1k", PRICE, nullable=False),
        sa.Column("per_request", PRICE, nullable=False, server_default="0"),
        sa.Column("per_second", PRICE, nullable=False, server_default="0"),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("effective_to", sa.DateTime(timezone=True)),
        sa.Column("created_by", sa.String(64)),
        sa.CheckConstraint(
            "input_per_1k >= 0 AND output_per_1k >= 0 AND per_request >= 0 AND per_second >= 0",
            name="ck_model_prices_nonneg",
        ),
    )
    op.create_index(
        "uq_model_prices_current",
        "model_prices",
        ["provider", "model"],
        unique=True,
        postgresql_where=sa.text("effective_to IS NULL"),
        sqlite_where=sa.text("effective_to IS NULL"),
    )
    op.create_index("ix_model_prices_lookup", "model_prices", ["provider", "model", "effective_from"])
    now = dt.datetime.now(dt.UTC)
    op.bulk_insert(
        prices,
        [
            {
                "id": uuid.uuid4(),
                "provider": provider,
                "model": model,
                "input_per_1k": Decimal(i),
                "output_per_1k": Decimal(o),
                "per_request": Decimal(r),
                "per_second": Decimal(s),
                "effective_from": now,
                "effective_to": None,
                "created_by": None,
            }
            for provider, model, i, o, r, s in SEED
        ],
    )


def downgrade() -> None:
    op.drop_table("model_prices")

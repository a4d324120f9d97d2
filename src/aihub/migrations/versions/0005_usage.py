"""Usage events, quotas and quota counters.

Revision ID: 0005_usage
Revises: 0003_ledger, 0004_pricing
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_usage"
down_revision = ("0003_ledger", "0004_pricing")
branch_labels = None
depends_on = None

UTC_TS = sa.DateTime(timezone=True)
JSON_T = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
DEC = sa.Numeric(18, 6)


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("price_id", sa.Uuid(), sa.ForeignKey("model_prices.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("duration_seconds", DEC),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger()),
        sa.Column("transaction_id", sa.Uuid()),
        sa.Column("reporter_id", sa.String(64)),
        sa.Column("metadata", JSON_T),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.UniqueConstraint("request_id", name="uq_usage_events_request_id"),
        sa.CheckConstraint("credits >= 0 AND input_tokens >= 0 AND output_tokens >= 0", name="ck_usage_nonneg"),
    )
    op.create_index("ix_usage_user_created", "usage_events", ["user_id", "created_at"])
    op.create_index("ix_usage_created", "usage_events", ["created_at", "id"])
    op.create_index("ix_usage_model_created", "usage_events", ["provider", "model", "created_at"])
    op.create_table(
        "quotas",
        sa.Column("scope", sa.String(80), primary_key=True),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("max_credits", sa.BigInteger()),
        sa.Column("max_tokens", sa.BigInteger()),
        sa.Column("max_requests", sa.BigInteger()),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
        sa.CheckConstraint("period IN ('day', 'month')", name="ck_quotas_period"),
    )
    op.create_table(
        "quota_counters",
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("period_key", sa.String(16), primary_key=True),
        sa.Column("credits", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("quota_counters")
    op.drop_table("quotas")
    op.drop_table("usage_events")

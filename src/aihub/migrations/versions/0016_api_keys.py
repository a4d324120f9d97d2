"""API keys, their counters, pre-call usage authorizations, stacked quotas and usage counters.

Revision ID: 0016_api_keys
Revises: 0009_usage_reports
Create Date: 2026-12-01

``api_keys.prefix`` is unique: a presented key is found by its prefix (an index probe), then
its SHA-256 is compared in constant time. ``ix_usage_authorizations_active_expiry`` lets the
expiry sweep find overdue active authorizations without a scan.

``quota_limits`` holds every limit of a scope (``role:<name>``, ``user:<id>``, ``key:<id>``),
one row each; the single limit of each existing ``quotas`` row is copied in. ``usage_counters``
counts every user's and key's usage per period (minute … month), in total and per model,
whether a quota exists or not, so a quota set mid-period sees the whole period's usage.
``ix_usage_counters_end`` lets the cleanup drop finished periods without a scan.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0016_api_keys"
down_revision = "0009_usage_reports"
branch_labels = None
depends_on = None

UTC_TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("models", JSON),
        sa.Column("allowed_ips", JSON),
        sa.Column("requests_per_minute", sa.BigInteger()),
        sa.Column("tokens_per_minute", sa.BigInteger()),
        sa.Column("budget_max_credits", sa.BigInteger()),
        sa.Column("budget_period", sa.String(8)),
        sa.Column("created_by", sa.String(64)),
        sa.Column("expires_at", UTC_TS),
        sa.Column("revoked_at", UTC_TS),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
        sa.CheckConstraint("budget_max_credits IS NULL OR budget_max_credits >= 0", name="ck_api_keys_budget"),
    )
    op.create_index("ix_api_keys_user_created", "api_keys", ["user_id", "created_at"])
    op.create_table(
        "api_key_counters",
        sa.Column("key_id", sa.Uuid(), sa.ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("period_key", sa.String(24), primary_key=True),
        sa.Column("credits", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.CheckConstraint("credits >= 0 AND tokens >= 0", name="ck_api_key_counters_nonneg"),
    )
    op.create_table(
        "usage_authorizations",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), sa.ForeignKey("api_keys.id", ondelete="SET NULL")),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("max_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("max_output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("held_credits", sa.BigInteger(), nullable=False),
        sa.Column("hold_id", sa.Uuid()),
        sa.Column("reservations", JSON, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("usage_event_id", sa.Uuid()),
        sa.Column("created_by", sa.String(64)),
        sa.Column("expires_at", UTC_TS, nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("resolved_at", UTC_TS),
    )
    op.create_index("ix_usage_authorizations_active_expiry", "usage_authorizations", ["status", "expires_at"])
    op.create_index("ix_usage_authorizations_user_created", "usage_authorizations", ["user_id", "created_at"])

    op.create_table(
        "quota_limits",
        sa.Column("scope", sa.String(80), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("model", sa.String(200), nullable=False, server_default=""),
        sa.Column("max_credits", sa.BigInteger()),
        sa.Column("max_tokens", sa.BigInteger()),
        sa.Column("max_requests", sa.BigInteger()),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
    )
    op.execute(
        "INSERT INTO quota_limits (scope, position, period, model, max_credits, max_tokens, max_requests,"
        " created_at, updated_at) SELECT scope, 0, period, '', max_credits, max_tokens, max_requests,"
        " created_at, updated_at FROM quotas"
    )
    op.create_table(
        "usage_counters",
        sa.Column("subject", sa.String(48), primary_key=True),
        sa.Column("period_key", sa.String(24), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("credits", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("period_end", UTC_TS, nullable=False),
    )
    op.create_index("ix_usage_counters_end", "usage_counters", ["period_end"])


def downgrade() -> None:
    op.drop_table("usage_counters")
    op.drop_table("quota_limits")
    op.drop_table("usage_authorizations")
    op.drop_table("api_key_counters")
    op.drop_table("api_keys")

"""Promo codes, per-user redemption counters and redemptions.

Revision ID: 0006_promos
Revises: 0005_usage
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_promos"
down_revision = "0005_usage"
branch_labels = None
depends_on = None

UTC_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "promo_codes",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("max_redemptions", sa.BigInteger()),
        sa.Column("per_user_limit", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("starts_at", UTC_TS),
        sa.Column("expires_at", UTC_TS),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("description", sa.String(500)),
        sa.Column("created_by", sa.String(64)),
        sa.Column("redeemed_count", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("credits_granted", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
        sa.UniqueConstraint("code", name="uq_promo_codes_code"),
        sa.CheckConstraint("credits > 0", name="ck_promo_codes_credits"),
        sa.CheckConstraint("per_user_limit >= 1", name="ck_promo_codes_per_user"),
        sa.CheckConstraint("redeemed_count >= 0 AND credits_granted >= 0", name="ck_promo_codes_stats"),
        sa.CheckConstraint("max_redemptions IS NULL OR redeemed_count <= max_redemptions", name="ck_promo_codes_max"),
    )
    op.create_index("ix_promo_codes_created", "promo_codes", ["created_at", "id"])
    op.create_table(
        "promo_user_counts",
        sa.Column("promo_id", sa.Uuid(), sa.ForeignKey("promo_codes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("n", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_table(
        "promo_redemptions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("promo_id", sa.Uuid(), sa.ForeignKey("promo_codes.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("transaction_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.UniqueConstraint("promo_id", "user_id", "seq", name="uq_promo_redemptions_user_seq"),
    )
    op.create_index("ix_promo_redemptions_promo_created", "promo_redemptions", ["promo_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_table("promo_redemptions")
    op.drop_table("promo_user_counts")
    op.drop_table("promo_codes")

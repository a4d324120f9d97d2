"""Sora2 video tool: session tokens and generations (hold-then-capture).

Revision ID: 0007_sora
Revises: 0005_usage
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_sora"
down_revision = "0005_usage"
branch_labels = None
depends_on = None

UTC_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sora_sessions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("expires_at", UTC_TS, nullable=False),
        sa.Column("revoked_at", UTC_TS),
        sa.Column("last_used_at", UTC_TS),
        sa.UniqueConstraint("token_hash", name="uq_sora_sessions_token_hash"),
    )
    op.create_index("ix_sora_sessions_user", "sora_sessions", ["user_id", "created_at"])
    op.create_table(
        "sora_generations",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("session_id", sa.Uuid(), sa.ForeignKey("sora_sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("hold_id", sa.Uuid(), nullable=False),
        sa.Column("duration_seconds", sa.Numeric(18, 6), nullable=False),
        sa.Column("resolution", sa.String(8), nullable=False),
        sa.Column("prompt", sa.Text()),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("charged", sa.BigInteger()),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("failure_reason", sa.String(500)),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("expires_at", UTC_TS, nullable=False),
        sa.Column("resolved_at", UTC_TS),
        sa.CheckConstraint(
            "status IN ('pending', 'completed', 'failed', 'expired')", name="ck_sora_generations_status"
        ),
    )
    op.create_index("ix_sora_generations_user", "sora_generations", ["user_id", "created_at"])
    op.create_index("ix_sora_generations_pending", "sora_generations", ["status", "expires_at"])


def downgrade() -> None:
    op.drop_table("sora_generations")
    op.drop_table("sora_sessions")

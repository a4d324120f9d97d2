"""Identity: the Google account link, mailed one-time tokens.

Revision ID: 0013_identity
Revises: 0009_usage_reports
Create Date: 2026-12-01

* ``users.google_id`` holds the Google account's ``sub`` once linked; a unique index (NULLs
  allowed, on both engines) makes a Google account sign in to one user only.
* ``users.tokens_valid_after``: a password reset sets it, and every service refuses a user's
  access token issued before it (the user row is read on every request anyway).
* ``auth_email_tokens`` keeps the SHA-256 of each verification or reset token, the address it
  was mailed to, its expiry and when it was spent; spending is one conditional UPDATE.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_identity"
down_revision = "0009_usage_reports"
branch_labels = None
depends_on = None

UTC_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("users", sa.Column("google_id", sa.String(255)))
    op.create_index("ux_users_google_id", "users", ["google_id"], unique=True)
    op.create_table(
        "auth_email_tokens",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("expires_at", UTC_TS, nullable=False),
        sa.Column("used_at", UTC_TS),
        sa.UniqueConstraint("token_hash", name="uq_auth_email_tokens_hash"),
        sa.CheckConstraint("purpose IN ('verify', 'reset')", name="ck_auth_email_tokens_purpose"),
    )
    op.create_index("ix_auth_email_tokens_user", "auth_email_tokens", ["user_id", "purpose"])


def downgrade() -> None:
    op.drop_table("auth_email_tokens")
    op.drop_index("ux_users_google_id", table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("google_id")

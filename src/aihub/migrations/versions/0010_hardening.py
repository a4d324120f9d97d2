"""Audit chain v3: each row keeps the canonical JSON text its hash covers (``content``).

jsonb does not give numbers back as written (``1e16`` returns as ``10000000000000000``), so a
v2 row holding a float could never be re-hashed from its columns again. v3 hashes the stored
text byte for byte, and verification checks that the columns say the same as the text.
Rows written before this revision keep their v1/v2 hash and are checked by their version.

``users.sessions_revoked_at``: core refuses a user's access tokens issued before it
(``aihub admin set-password``, which may run in another process than an embedded server and so
cannot reach its in-memory blacklist).

Revision ID: 0010_hardening
Revises: 0009_usage_reports
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_hardening"
down_revision = "0009_usage_reports"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_logs", sa.Column("content", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("sessions_revoked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Rows hashed with v3 cannot be checked without their text: refuse rather than break the chain.
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT 1 FROM audit_logs WHERE hash_version = 3 LIMIT 1")).first() is not None:
        raise RuntimeError("audit rows use hash v3; downgrading would break their verification")
    op.drop_column("users", "sessions_revoked_at")
    op.drop_column("audit_logs", "content")

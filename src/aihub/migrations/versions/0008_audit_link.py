"""Audit chain v2: a row's hash links ``prev:seq:content-digest``, so PostgreSQL can append a
row in one statement (the head update computes the link; the insert reads it back).

Rows written before this revision keep their v1 hash (``hash_version`` 1); ``verify`` checks
each row by its own version. Also joins the promos and sora branches into one head.

Revision ID: 0008_audit_link
Revises: 0006_promos, 0007_sora
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_audit_link"
down_revision = ("0006_promos", "0007_sora")
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The head remembers the hash it replaced, so the one-statement append can return both.
    op.add_column("audit_chain_heads", sa.Column("prev_hash", sa.String(64), nullable=True))
    op.add_column(
        "audit_logs", sa.Column("hash_version", sa.SmallInteger(), nullable=False, server_default=sa.text("1"))
    )


def downgrade() -> None:
    # Rows hashed with v2 would no longer verify under v1: refuse rather than break the chain.
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT 1 FROM audit_logs WHERE hash_version <> 1 LIMIT 1")).first() is not None:
        raise RuntimeError("audit rows use hash v2; downgrading would break their verification")
    op.drop_column("audit_logs", "hash_version")
    op.drop_column("audit_chain_heads", "prev_hash")

"""Credit ledger: append-only transactions (trigger-guarded on PostgreSQL), holds, idempotency keys.

Revision ID: 0003_ledger
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_ledger"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC_TS = sa.DateTime(timezone=True)
JSON_T = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SEQ_T = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_PG_GUARD = """
CREATE OR REPLACE FUNCTION credit_transactions_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'credit_transactions is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql
"""
_PG_TRIGGER = """
CREATE TRIGGER credit_transactions_append_only
BEFORE UPDATE OR DELETE ON credit_transactions
FOR EACH ROW EXECUTE FUNCTION credit_transactions_append_only()
"""
# SQLite has no stored functions, but a trigger can abort the statement all the same.
_SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER credit_transactions_no_update BEFORE UPDATE ON credit_transactions
    BEGIN SELECT RAISE(ABORT, 'credit_transactions is append-only: UPDATE refused'); END
    """,
    """
    CREATE TRIGGER credit_transactions_no_delete BEFORE DELETE ON credit_transactions
    BEGIN SELECT RAISE(ABORT, 'credit_transactions is append-only: DELETE refused'); END
    """,
]


def upgrade() -> None:
    op.add_column("credit_accounts", sa.Column("low_balance_threshold", sa.BigInteger(), nullable=True))
    op.create_table(
        "credit_transactions",
        sa.Column("seq", SEQ_T, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("credit_accounts.user_id", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("related_id", sa.Uuid()),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("metadata", JSON_T),
        sa.Column("actor_id", sa.String(64)),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.CheckConstraint("type IN ('credit', 'debit')", name="ck_credit_tx_type"),
        sa.CheckConstraint(
            "(type = 'credit' AND amount > 0) OR (type = 'debit' AND amount < 0)", name="ck_credit_tx_sign"
        ),
        sa.CheckConstraint("balance_after >= 0", name="ck_credit_tx_balance_after"),
    )
    op.create_index("uq_credit_tx_id", "credit_transactions", ["id"], unique=True)
    op.create_index("ix_credit_tx_user_created", "credit_transactions", ["user_id", "created_at", "id"])
    op.create_index("ix_credit_tx_user_seq", "credit_transactions", ["user_id", "seq"])
    op.create_index("ix_credit_tx_related", "credit_transactions", ["related_id"])

    op.create_table(
        "credit_holds",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("credit_accounts.user_id", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("captured", sa.BigInteger()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("metadata", JSON_T),
        sa.Column("expires_at", UTC_TS, nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("resolved_at", UTC_TS),
        sa.CheckConstraint("amount > 0", name="ck_credit_holds_amount"),
        sa.CheckConstraint("status IN ('held', 'captured', 'released', 'expired')", name="ck_credit_holds_status"),
    )
    op.create_index("ix_credit_holds_status_expiry", "credit_holds", ["status", "expires_at"])
    op.create_index("ix_credit_holds_user", "credit_holds", ["user_id", "created_at"])

    op.create_table(
        "idempotency_keys",
        sa.Column("principal", sa.String(64), primary_key=True),
        sa.Column("idem_key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("body", sa.LargeBinary()),
        sa.Column("created_at", UTC_TS, nullable=False),
    )
    op.create_index("ix_idempotency_keys_created", "idempotency_keys", ["created_at"])

    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_GUARD)
        op.execute(_PG_TRIGGER)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS credit_transactions_append_only ON credit_transactions")
        op.execute("DROP FUNCTION IF EXISTS credit_transactions_append_only()")
    op.drop_table("idempotency_keys")
    op.drop_table("credit_holds")
    op.drop_table("credit_transactions")
    with op.batch_alter_table("credit_accounts") as batch:
        batch.drop_column("low_balance_threshold")

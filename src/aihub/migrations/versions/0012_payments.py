"""Payments (credit packages, checkouts, provider events) and notifications (alert settings,
webhook endpoints, deliveries and attempts); the payments and webhooks permissions.

Revision ID: 0012_payments
Revises: 0009_usage_reports
Create Date: 2026-12-01

Why these keys and indexes:

* ``payment_events`` has the provider's event id as its primary key: the webhook inserts it
  first (``ON CONFLICT DO NOTHING``), so a redelivered event is recognised before anything
  moves, and concurrent deliveries of one event queue on that key.
* ``uq_payments_provider_session`` makes one checkout session match one payment; the grant
  itself is guarded by a conditional ``UPDATE … WHERE status = 'pending'`` (the second guard).
* ``ix_webhook_deliveries_due`` lets the retry sweep find due messages without a scan.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012_payments"
down_revision = "0009_usage_reports"
branch_labels = None
depends_on = None

UTC_TS = sa.DateTime(timezone=True)
JSON_T = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

PERMISSIONS = [
    ("payments:read", "List every user's payments"),
    ("payments:write", "Create, edit and remove credit packages"),
    ("webhooks:read", "List webhook endpoints and their deliveries"),
    ("webhooks:write", "Create, edit, test and remove webhook endpoints"),
]
MANAGER = ["payments:read", "webhooks:read"]


def upgrade() -> None:
    op.create_table(
        "credit_packages",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
        sa.CheckConstraint("credits > 0", name="ck_credit_packages_credits"),
        sa.CheckConstraint("amount > 0", name="ck_credit_packages_amount"),
    )
    op.create_table(
        "payments",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("package_id", sa.String(64), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("provider_session_id", sa.String(255)),
        sa.Column("provider_payment_id", sa.String(255)),
        sa.Column("checkout_url", sa.String(2048)),
        sa.Column("transaction_id", sa.Uuid()),
        sa.Column("refunded_credits", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("refunded_amount", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("refund_shortfall", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
        sa.Column("paid_at", UTC_TS),
        sa.CheckConstraint("status IN ('pending', 'paid', 'refunded', 'failed')", name="ck_payments_status"),
        sa.CheckConstraint("refunded_credits >= 0 AND refunded_credits <= credits", name="ck_payments_refunded"),
    )
    op.create_index("uq_payments_provider_session", "payments", ["provider", "provider_session_id"], unique=True)
    op.create_index("ix_payments_provider_intent", "payments", ["provider", "provider_payment_id"])
    op.create_index("ix_payments_user_created", "payments", ["user_id", "created_at", "id"])
    op.create_index("ix_payments_created", "payments", ["created_at", "id"])
    op.create_table(
        "payment_events",
        sa.Column("provider", sa.String(16), primary_key=True),
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("payment_id", sa.Uuid()),
        sa.Column("payload", JSON_T),
        sa.Column("received_at", UTC_TS, nullable=False),
    )

    op.create_table(
        "credit_alert_settings",
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("thresholds", JSON_T, nullable=False),
        sa.Column("email", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("updated_at", UTC_TS, nullable=False),
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("events", JSON_T, nullable=False),
        sa.Column("description", sa.String(500)),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("endpoint_id", sa.Uuid(), sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTC_TS, nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("delivered_at", UTC_TS),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="ck_webhook_deliveries_status"),
    )
    op.create_index("ix_webhook_deliveries_endpoint", "webhook_deliveries", ["endpoint_id", "created_at", "id"])
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "delivery_id",
            sa.Uuid(),
            sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error", sa.String(255)),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
    )
    op.create_index("ix_webhook_attempts_delivery", "webhook_attempts", ["delivery_id", "attempt"])

    now = dt.datetime.now(dt.UTC)
    perms = sa.table(
        "permissions",
        sa.column("name", sa.String),
        sa.column("description", sa.String),
        sa.column("created_at", UTC_TS),
    )
    links = sa.table("role_permissions", sa.column("role_name", sa.String), sa.column("permission_name", sa.String))
    op.bulk_insert(perms, [{"name": n, "description": d, "created_at": now} for n, d in PERMISSIONS])
    op.bulk_insert(links, [{"role_name": "manager", "permission_name": p} for p in MANAGER])


def downgrade() -> None:
    names = [n for n, _ in PERMISSIONS]
    op.execute(
        sa.text("DELETE FROM role_permissions WHERE permission_name IN :n").bindparams(
            sa.bindparam("n", names, expanding=True)
        )
    )
    op.execute(
        sa.text("DELETE FROM user_permissions WHERE permission_name IN :n").bindparams(
            sa.bindparam("n", names, expanding=True)
        )
    )
    op.execute(sa.text("DELETE FROM permissions WHERE name IN :n").bindparams(sa.bindparam("n", names, expanding=True)))
    for table in ("webhook_attempts", "webhook_deliveries", "webhook_endpoints", "credit_alert_settings"):
        op.drop_table(table)
    for table in ("payment_events", "payments", "credit_packages"):
        op.drop_table(table)

"""Foundation: users, roles and permissions (seeded), credit accounts, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import datetime as dt
import hashlib

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTC_TS = sa.DateTime(timezone=True)
JSON_T = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
AUDIT_CHAINS = 64

ROLES = [
    ("admin", 100, "Full access; holds every permission"),
    ("manager", 50, "Manages users below manager level and reads reports"),
    ("user", 10, "A registered user"),
    ("guest", 0, "Unauthenticated or unverified caller"),
]

# One permission for every protected endpoint in API.md (resource:action).
PERMISSIONS = [
    ("users:read", "List and read users"),
    ("users:create", "Create users"),
    ("users:update", "Update, suspend and reactivate users"),
    ("users:delete", "Delete (anonymise) users"),
    ("roles:read", "List and read roles"),
    ("roles:write", "Create, edit and delete roles and their permissions"),
    ("roles:assign", "Assign roles to users (below one's own level)"),
    ("permissions:read", "List permissions and check other users' permissions"),
    ("permissions:write", "Create permissions and grant them to users"),
    ("credits:read", "Read any credit account and its transactions"),
    ("credits:grant", "Grant and refund credits"),
    ("credits:deduct", "Deduct credits and manage holds"),
    ("pricing:write", "Set and remove model prices"),
    ("usage:read", "Read any user's usage"),
    ("usage:write", "Report usage events"),
    ("quotas:read", "Read any quota"),
    ("quotas:write", "Set and remove quotas"),
    ("analytics:read", "Read analytics"),
    ("billing:read", "Read any user's billing report"),
    ("promo:read", "List and read promo codes"),
    ("promo:write", "Create and edit promo codes"),
    ("audit:read", "Read and verify the audit log"),
    ("gateway:admin", "Manage the gateway's blocked IPs"),
    ("service-tokens:write", "Create, list and revoke service tokens"),
]

ROLE_PERMISSIONS = {
    "manager": [
        "users:read",
        "users:create",
        "users:update",
        "roles:read",
        "roles:assign",
        "permissions:read",
        "credits:read",
        "usage:read",
        "quotas:read",
        "analytics:read",
        "billing:read",
        "promo:read",
        "audit:read",
    ],
    "user": [],
    "guest": [],
}


def _genesis(chain: int) -> str:
    return hashlib.sha256(f"aihub-audit-genesis:{chain}".encode()).hexdigest()


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("display_name", sa.String(100)),
        sa.Column("password_hash", sa.String(255)),
        sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
        sa.CheckConstraint("status IN ('active', 'suspended', 'deleted')", name="ck_users_status"),
        sa.UniqueConstraint("email", name="uq_users_email"),
    )
    op.create_index("ix_users_created", "users", ["created_at", "id"])

    op.create_table(
        "roles",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(255)),
        sa.Column("system", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
    )
    op.create_table(
        "permissions",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("description", sa.String(255)),
        sa.Column("created_at", UTC_TS, nullable=False),
    )
    op.create_table(
        "role_permissions",
        sa.Column(
            "role_name",
            sa.String(32),
            sa.ForeignKey("roles.name", ondelete="CASCADE", onupdate="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "permission_name",
            sa.String(64),
            sa.ForeignKey("permissions.name", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_table(
        "user_roles",
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column(
            "role_name",
            sa.String(32),
            sa.ForeignKey("roles.name", ondelete="CASCADE", onupdate="CASCADE"),
            primary_key=True,
        ),
        sa.Column("created_at", UTC_TS, nullable=False),
    )
    op.create_index("ix_user_roles_role", "user_roles", ["role_name"])
    op.create_table(
        "user_permissions",
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column(
            "permission_name",
            sa.String(64),
            sa.ForeignKey("permissions.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("created_at", UTC_TS, nullable=False),
    )
    op.create_table(
        "credit_accounts",
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="RESTRICT"), primary_key=True),
        sa.Column("balance", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("reserved", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
        sa.CheckConstraint("balance >= 0", name="ck_credit_accounts_balance_nonneg"),
        sa.CheckConstraint("reserved >= 0", name="ck_credit_accounts_reserved_nonneg"),
        sa.CheckConstraint("reserved <= balance", name="ck_credit_accounts_reserved_le_balance"),
    )
    op.create_table(
        "audit_logs",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("chain", sa.Integer(), nullable=False),
        sa.Column("chain_seq", sa.BigInteger(), nullable=False),
        sa.Column("actor_id", sa.String(64)),
        sa.Column("actor_type", sa.String(16), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("entity_type", sa.String(32), nullable=False),
        sa.Column("entity_id", sa.String(128)),
        sa.Column("before", JSON_T),
        sa.Column("after", JSON_T),
        sa.Column("request_id", sa.String(128)),
        sa.Column("ip", sa.String(64)),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("uq_audit_chain_seq", "audit_logs", ["chain", "chain_seq"], unique=True)
    op.create_index("ix_audit_created", "audit_logs", ["created_at", "id"])
    op.create_index("ix_audit_entity", "audit_logs", ["entity_type", "entity_id"])
    op.create_index("ix_audit_actor", "audit_logs", ["actor_id"])
    heads = op.create_table(
        "audit_chain_heads",
        sa.Column("chain", sa.Integer(), primary_key=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
    )
    _seed(heads)


def _seed(heads: sa.Table) -> None:
    now = dt.datetime.now(dt.UTC)
    roles = sa.table(
        "roles",
        sa.column("name"),
        sa.column("level"),
        sa.column("description"),
        sa.column("system"),
        sa.column("created_at", UTC_TS),
        sa.column("updated_at", UTC_TS),
    )
    op.bulk_insert(
        roles,
        [
            {"name": n, "level": lvl, "description": d, "system": True, "created_at": now, "updated_at": now}
            for n, lvl, d in ROLES
        ],
    )
    perms = sa.table("permissions", sa.column("name"), sa.column("description"), sa.column("created_at", UTC_TS))
    op.bulk_insert(perms, [{"name": n, "description": d, "created_at": now} for n, d in PERMISSIONS])
    links = sa.table("role_permissions", sa.column("role_name"), sa.column("permission_name"))
    op.bulk_insert(links, [{"role_name": r, "permission_name": p} for r, ps in ROLE_PERMISSIONS.items() for p in ps])
    op.bulk_insert(heads, [{"chain": c, "last_seq": 0, "last_hash": _genesis(c)} for c in range(AUDIT_CHAINS)])


def downgrade() -> None:
    for table in (
        "audit_chain_heads",
        "audit_logs",
        "credit_accounts",
        "user_permissions",
        "user_roles",
        "role_permissions",
        "permissions",
        "roles",
        "users",
    ):
        op.drop_table(table)

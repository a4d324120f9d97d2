"""Usage windows: one row per subject and model holding the current window of every period.

Revision ID: 0017_usage_windows
Revises: 0016_api_keys
Create Date: 2026-12-01

A call upserted ten ``usage_counters`` rows per subject (five periods, all models and its
own); it now upserts two ``usage_windows`` rows (all models, its own), each with every
period's current window key and amounts. ``usage_counters`` stays: it keeps the increments
that arrive for a window the row has already moved past (clock skew between writers,
backdated events) and the windows a row rolls out of its columns. A window's total is the
wide row's amounts while its key is that window's, plus the window's ``usage_counters`` row.

No data is copied: the counters written before this revision stay where they are and still
count through that "plus its ``usage_counters`` row" rule until the purge drops them.
``ix_usage_windows_end`` lets the purge find rows whose windows all ended days ago (the row's
``ends_at`` is its latest window end: a week can end after its month).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0017_usage_windows"
down_revision = "0016_api_keys"
branch_labels = None
depends_on = None

UTC_TS = sa.DateTime(timezone=True)
# Written out, not imported: a migration keeps the schema of its day whatever the code becomes.
PERIODS = ("minute", "hour", "day", "week", "month")
FIELDS = ("credits", "tokens", "requests")


def _period_columns(period: str) -> list[sa.Column[Any]]:
    return [
        sa.Column(f"{period}_key", sa.String(24), nullable=False),
        *(sa.Column(f"{period}_{field}", sa.BigInteger(), nullable=False) for field in FIELDS),
        sa.Column(f"{period}_out_key", sa.String(24)),
        *(sa.Column(f"{period}_out_{field}", sa.BigInteger()) for field in FIELDS),
    ]


def upgrade() -> None:
    op.create_table(
        "usage_windows",
        sa.Column("subject", sa.String(48), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        *(column for period in PERIODS for column in _period_columns(period)),
        sa.Column("ends_at", UTC_TS, nullable=False),
    )
    op.create_index("ix_usage_windows_end", "usage_windows", ["ends_at"])


def downgrade() -> None:
    op.drop_table("usage_windows")

"""Daily usage rollups, report jobs, and the indexes the reports read through.

Revision ID: 0009_usage_reports
Revises: 0002_auth, 0008_audit_link
Create Date: 2026-11-27

Why these tables and indexes (measured by bench/usage on 1,000,000 usage rows):

* ``usage_daily_rollups`` holds one row per UTC day x user x provider x model. The analytics
  overview and the usage summary read it for complete past days and the raw rows only for
  the partial edges (today, a ``from``/``to`` inside a day), so their cost follows the number
  of rollup rows, not of events. Its primary key starts with ``day``: every all-users query
  is a day-range scan of it. ``ix_usage_rollup_user_day`` serves one user's summary or
  report over a period (a handful of rows per day). No foreign key: the rows are derived
  data, recomputed from ``usage_events`` (which has the key), and an FK check per upserted
  row would only slow the nightly job down.
* ``usage_daily_model_rollups`` sums the same per day x provider x model only (no user): the
  overview's totals, providers, models and days read a few hundred rows from it, not the
  hundreds of thousands of the per-user table (measured: 389,732 per-user rows for 1M events
  over 60 days, but 720 per-model rows). It is written in the same transaction as the day's
  per-user rows, so the two always agree.
* ``usage_rollup_state`` records up to which day the rollups are complete: readers use a
  rollup row only for a day before that mark, so a day that is being recomputed, or was
  never computed, is read from the raw rows instead (never counted twice, never missed).
* ``report_jobs`` keeps a long report's state and its finished result in the database, so any
  core instance can answer the poll and serve the download. ``ix_report_jobs_owner`` lists a
  caller's own jobs newest first; ``ix_report_jobs_status`` lets the sweep find stuck jobs and
  ``ix_report_jobs_expiry`` the expired ones without a scan; ``uq_report_jobs_in_flight``
  (partial, unique) allows one queued or running job per caller and identical request.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009_usage_reports"
down_revision = ("0002_auth", "0008_audit_link")
branch_labels = None
depends_on = None

UTC_TS = sa.DateTime(timezone=True)
JSON_T = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "usage_daily_rollups",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "user_id", "provider", "model", name="pk_usage_daily_rollups"),
    )
    op.create_index("ix_usage_rollup_user_day", "usage_daily_rollups", ["user_id", "day"])
    op.create_table(
        "usage_daily_model_rollups",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "provider", "model", name="pk_usage_daily_model_rollups"),
    )
    op.create_table(
        "usage_rollup_state",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("complete_until", sa.Date()),
        sa.Column("updated_at", UTC_TS, nullable=False),
    )
    op.create_table(
        "report_jobs",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("format", sa.String(4), nullable=False),
        sa.Column("params", JSON_T, nullable=False),
        sa.Column("params_hash", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.String(500)),
        sa.Column("result", sa.LargeBinary()),
        sa.Column("content_type", sa.String(64)),
        sa.Column("filename", sa.String(200)),
        sa.Column("result_bytes", sa.BigInteger()),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("started_at", UTC_TS),
        sa.Column("finished_at", UTC_TS),
        sa.Column("expires_at", UTC_TS),
        sa.CheckConstraint("kind IN ('billing', 'billing_export', 'overview')", name="ck_report_jobs_kind"),
        sa.CheckConstraint("format IN ('json', 'csv')", name="ck_report_jobs_format"),
        sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')", name="ck_report_jobs_status"),
        # A result exists exactly when the job succeeded: never a half result on a failed job.
        sa.CheckConstraint("(status = 'succeeded') = (result IS NOT NULL)", name="ck_report_jobs_result"),
    )
    op.create_index("ix_report_jobs_owner", "report_jobs", ["requested_by", "created_at", "id"])
    op.create_index("ix_report_jobs_status", "report_jobs", ["status", "created_at"])
    op.create_index("ix_report_jobs_expiry", "report_jobs", ["expires_at"])
    # One live job per caller and request: two identical requests at once get the same job.
    in_flight = sa.text("status IN ('queued', 'running')")
    op.create_index(
        "uq_report_jobs_in_flight",
        "report_jobs",
        ["requested_by", "params_hash"],
        unique=True,
        postgresql_where=in_flight,
        sqlite_where=in_flight,
    )


def downgrade() -> None:
    op.drop_table("report_jobs")
    op.drop_table("usage_rollup_state")
    op.drop_table("usage_daily_model_rollups")
    op.drop_table("usage_daily_rollups")

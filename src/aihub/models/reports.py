from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, Index, LargeBinary, String, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from aihub.kit.db import Base, JSONType, UTCDateTime, utcnow


class ReportJob(Base):
    """A report computed in the background; its finished result is kept until ``expires_at``.

    ``result`` is written in the same statement that marks the job succeeded, so a job is
    either still working, failed (with an error code and no result) or complete.
    """

    __tablename__ = "report_jobs"
    __table_args__ = (
        Index("ix_report_jobs_owner", "requested_by", "created_at", "id"),
        Index("ix_report_jobs_status", "status", "created_at"),
        Index("ix_report_jobs_expiry", "expires_at"),
        Index(
            "uq_report_jobs_in_flight",
            "requested_by",
            "params_hash",
            unique=True,
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(4))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    params_hash: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(12), default="queued")
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(500))
    result: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    content_type: Mapped[str | None] = mapped_column(String(64))
    filename: Mapped[str | None] = mapped_column(String(200))
    result_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

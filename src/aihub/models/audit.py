from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, SmallInteger, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aihub.kit.db import Base, JSONType, UTCDateTime, utcnow


class AuditLog(Base):
    """Append-only; rows of one chain are linked by ``prev_hash`` -> ``hash``.

    The log is split into a fixed number of chains (by entity) so that unrelated writes do
    not queue behind one global lock; ``verify`` walks every chain.
    """

    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("uq_audit_chain_seq", "chain", "chain_seq", unique=True),
        Index("ix_audit_created", "created_at", "id"),
        Index("ix_audit_entity", "entity_type", "entity_id"),
        Index("ix_audit_actor", "actor_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    chain: Mapped[int] = mapped_column(Integer)
    chain_seq: Mapped[int] = mapped_column(BigInteger)
    actor_id: Mapped[str | None] = mapped_column(String(64))
    actor_type: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str | None] = mapped_column(String(128))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    request_id: Mapped[str | None] = mapped_column(String(128))
    ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # 1: sha256 of the canonical row (before 0008); 2: sha256("prev:seq:" + digest of the
    # columns, before 0010); 3: sha256("prev:seq:" + digest of ``content``).
    hash_version: Mapped[int] = mapped_column(SmallInteger, default=3, server_default="1")
    # v3: the canonical JSON text the hash covers, byte for byte (jsonb does not give floats
    # back as written, so the columns alone cannot be re-hashed); the columns must agree with it.
    content: Mapped[str | None] = mapped_column(Text)


class AuditChainHead(Base):
    """The tip of each chain. Its row lock is what serialises appends to one chain."""

    __tablename__ = "audit_chain_heads"

    chain: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the hash last_hash replaced

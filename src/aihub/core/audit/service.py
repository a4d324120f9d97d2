"""The audit log: every data change writes a row in the same transaction, hash-chained.

Rows are queued on the unit of work while the request runs and appended in one step just
before commit, chains in ascending order, so the short chain-head locks are always taken
last and in one order (no deadlock with the row locks the request already holds).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Any

from aihub.core.audit import repository as repo
from aihub.kit.db import Tx, utcnow
from aihub.kit.jsonutil import canonical, dumps, loads
from aihub.models import AuditLog

AUDIT_CHAINS = 64  # fixed by migration 0001; changing it needs a migration of the heads
_SECRET_FIELDS = {"password", "password_hash", "passwordHash", "token", "refresh_token", "token_hash"}


@dataclass(slots=True)
class Actor:
    id: str | None
    type: str  # user | service | system


SYSTEM = Actor(id=None, type="system")


@dataclass(slots=True)
class _Entry:
    actor: Actor
    action: str
    entity_type: str
    entity_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    chain: int = field(init=False)

    def __post_init__(self) -> None:
        key = f"{self.entity_type}:{self.entity_id or ''}".encode()
        self.chain = zlib.crc32(key) % AUDIT_CHAINS


def genesis(chain: int) -> str:
    return hashlib.sha256(f"aihub-audit-genesis:{chain}".encode()).hexdigest()


def scrub(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """JSON-safe copy without secrets: what is hashed is exactly what the database returns."""
    if value is None:
        return None
    clean = {k: v for k, v in value.items() if k not in _SECRET_FIELDS}
    result: dict[str, Any] = loads(dumps(clean))
    return result


def _content(row: AuditLog) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "chain": row.chain,
        "actorId": row.actor_id,
        "actorType": row.actor_type,
        "action": row.action,
        "entityType": row.entity_type,
        "entityId": row.entity_id,
        "before": row.before,
        "after": row.after,
        "requestId": row.request_id,
        "ip": row.ip,
        "createdAt": row.created_at.astimezone(dt.UTC).isoformat(),
    }


def content_digest(row: AuditLog) -> str:
    """What the row says (everything but its place in the chain)."""
    return hashlib.sha256(canonical(_content(row))).hexdigest()


def link(prev: str, seq: int, digest: str) -> str:
    """The v2 row hash: plain text that PostgreSQL computes identically in the append statement."""
    return hashlib.sha256(f"{prev}:{seq}:{digest}".encode()).hexdigest()


def row_hash(row: AuditLog) -> str:
    if row.hash_version == 1:  # rows written before migration 0008
        content = {**_content(row), "seq": row.chain_seq, "prev": row.prev_hash}
        return hashlib.sha256(canonical(content)).hexdigest()
    return link(row.prev_hash, row.chain_seq, content_digest(row))


def set_actor(tx: Tx, actor: Actor) -> None:
    tx.info["actor"] = actor


def record(
    tx: Tx,
    action: str,
    entity_type: str,
    entity_id: object | None,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    actor: Actor | None = None,
) -> None:
    entry = _Entry(
        actor=actor or tx.info.get("actor", SYSTEM),
        action=action,
        entity_type=entity_type,
        entity_id=None if entity_id is None else str(entity_id),
        before=scrub(before),
        after=scrub(after),
    )
    tx.info.setdefault("audit", []).append(entry)
    tx.before_commit(_append_all)


async def _append_all(tx: Tx) -> None:
    entries: list[_Entry] = tx.info.pop("audit", [])
    if not entries:
        return
    now = utcnow()
    rows = sorted((_row(tx, entry, now) for entry in entries), key=lambda row: row.chain)
    if tx.session.get_bind().dialect.name == "postgresql":
        # One round trip per row: it runs while the request's row locks (a hot account) are
        # held, and on a busy event loop every extra await lengthens that window.
        for row in rows:
            await repo.append_linked(tx.session, row, content_digest(row))
        return
    await _append_locked(tx, rows)


def _row(tx: Tx, entry: _Entry, now: dt.datetime) -> AuditLog:
    return AuditLog(
        id=repo.new_id(),
        chain=entry.chain,
        actor_id=entry.actor.id,
        actor_type=entry.actor.type,
        action=entry.action,
        entity_type=entry.entity_type,
        entity_id=entry.entity_id,
        before=entry.before,
        after=entry.after,
        request_id=tx.request_id,
        ip=tx.ip,
        created_at=now,
        hash_version=2,
    )


async def _append_locked(tx: Tx, rows: list[AuditLog]) -> None:
    """SQLite (one writer at a time): read the head, link the rows in Python, move the head."""
    session = tx.session
    for chain in sorted({row.chain for row in rows}):
        head = await repo.lock_head(session, chain)
        seq, prev = head.last_seq, head.last_hash
        for row in (r for r in rows if r.chain == chain):
            seq += 1
            row.chain_seq, row.prev_hash = seq, prev
            row.hash = link(prev, seq, content_digest(row))
            prev = row.hash
            session.add(row)
        await session.flush()
        await repo.advance_head(session, chain, seq, prev)


@dataclass(slots=True)
class VerifyResult:
    valid: bool
    checked: int
    first_broken_id: str | None = None


async def verify(tx: Tx) -> VerifyResult:
    """Walk every chain: each row's hash, its link to the previous row, no gap, the head at the end."""
    checked = 0
    for head in await repo.heads(tx.session):
        expected_prev, expected_seq, last_id = genesis(head.chain), 1, None
        async for row in repo.chain_rows(tx.session, head.chain):
            checked += 1
            broken = row.chain_seq != expected_seq or row.prev_hash != expected_prev or row_hash(row) != row.hash
            if broken:
                return VerifyResult(False, checked, str(row.id))
            expected_prev, expected_seq, last_id = row.hash, expected_seq + 1, str(row.id)
        if head.last_seq != expected_seq - 1 or head.last_hash != expected_prev:
            # The newest rows of this chain are gone: point at the last row still standing.
            return VerifyResult(False, checked, last_id)
    return VerifyResult(True, checked)

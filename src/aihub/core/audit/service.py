"""The audit log: every data change writes a row in the same transaction, hash-chained.

Rows are queued on the unit of work while the request runs and appended in one step just
before commit, chains in ascending order, so the short chain-head locks are always taken
last and in one order (no deadlock with the row locks the request already holds).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aihub.core.audit import repository as repo
from aihub.kit.db import Tx, utcnow
from aihub.kit.jsonutil import JsonObject, canonical, dumps, loads
from aihub.kit.slots import Slot
from aihub.models import AuditLog

AUDIT_CHAINS = 64  # fixed by migration 0001; changing it needs a migration of the heads
# What an entry records of an entity before and after: its fields by name, with values the
# JSON encoder takes (UUIDs, datetimes, Decimals too); scrubbed into a JSON object when recorded.
Fields = Mapping[str, object]
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


def scrub(value: Fields | None) -> JsonObject | None:
    """JSON-safe copy without secrets: what is hashed is exactly what the database returns."""
    if value is None:
        return None
    clean = value if _SECRET_FIELDS.isdisjoint(value) else {k: v for k, v in value.items() if k not in _SECRET_FIELDS}
    result: JsonObject = loads(dumps(clean))  # a copy either way
    return result


@dataclass(slots=True)
class PendingRow:
    """An audit row to append set-based (the ledger engine): the columns, without an ORM object
    (building one costs more than everything else an event does)."""

    id: Any
    chain: int
    actor_id: str | None
    actor_type: str
    action: str
    entity_type: str
    entity_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    ip: str | None
    created_at: dt.datetime
    content: str = ""


def pending_row(
    entry: _Entry, request_id: str | None, ip: str | None, now: dt.datetime, row_id: uuid.UUID | None = None
) -> PendingRow:
    """The row of ``entry`` and the canonical text of its content (v3), as :func:`entry_row`.
    ``row_id``: the row's id when the caller drew it already (a batch draws its ids at once)."""
    row = PendingRow(
        row_id or repo.new_id(),
        entry.chain,
        entry.actor.id,
        entry.actor.type,
        entry.action,
        entry.entity_type,
        entry.entity_id,
        entry.before,
        entry.after,
        request_id,
        ip,
        now,
    )
    row.content = canonical(_content(row)).decode()
    return row


def _content(row: AuditLog | PendingRow) -> JsonObject:
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
    """v2: what the row says (everything but its place in the chain), rendered from its columns.

    Only sound when the database gives the JSON back exactly as it was written, which jsonb
    does not (``1e16`` comes back as ``10000000000000000``): hence v3."""
    return hashlib.sha256(canonical(_content(row))).hexdigest()


def text_digest(content: str) -> str:
    """v3: the digest of the canonical text stored with the row, exactly the bytes hashed."""
    return hashlib.sha256(content.encode()).hexdigest()


def link(prev: str, seq: int, digest: str) -> str:
    """The v2/v3 row hash: plain text that PostgreSQL computes identically in the append statement."""
    return hashlib.sha256(f"{prev}:{seq}:{digest}".encode()).hexdigest()


def _comparable(value: Any) -> Any:
    """JSON with every number as an exact Decimal, so ``1e16`` (float) and ``10000000000000000``
    (what jsonb renders it as) compare equal, while any change of value does not."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _columns_match_text(row: AuditLog) -> bool:
    """v3: the hash covers the stored text; the columns (what the API lists) must say the same."""
    assert row.content is not None
    try:
        stored = loads(row.content)
    except ValueError:
        return False
    return bool(_comparable(stored) == _comparable(_content(row)))


def row_hash(row: AuditLog) -> str | None:
    """The hash the row should carry by its own version, or ``None`` when it cannot be computed
    (a v3 row without its text, a value no canonical JSON can hold): broken either way."""
    try:
        if row.hash_version == 1:  # rows written before migration 0008
            content = {**_content(row), "seq": row.chain_seq, "prev": row.prev_hash}
            return hashlib.sha256(canonical(content)).hexdigest()
        if row.hash_version == 2:  # rows written before migration 0010
            return link(row.prev_hash, row.chain_seq, content_digest(row))
    except TypeError:  # e.g. an integer beyond 64 bits that jsonb made of a float
        return None
    if row.hash_version == 3 and row.content is not None and _columns_match_text(row):
        return link(row.prev_hash, row.chain_seq, text_digest(row.content))
    return None


# Who the unit of work acts for, and the entries it has recorded so far (appended at commit).
ACTOR: Slot[Actor] = Slot("audit.actor")
ENTRIES: Slot[list[_Entry]] = Slot("audit.entries")


def set_actor(tx: Tx, actor: Actor) -> None:
    tx.info.set(ACTOR, actor)


def record(
    tx: Tx,
    action: str,
    entity_type: str,
    entity_id: object | None,
    *,
    before: Fields | None = None,
    after: Fields | None = None,
    actor: Actor | None = None,
) -> None:
    entry = new_entry(actor or tx.info.get(ACTOR, SYSTEM), action, entity_type, entity_id, before=before, after=after)
    tx.info.setdefault(ENTRIES, []).append(entry)
    tx.before_commit(_append_all)


async def _append_all(tx: Tx) -> None:
    entries = tx.info.pop(ENTRIES, [])
    if not entries:
        return
    now = utcnow()
    rows = sorted((entry_row(entry, tx.request_id, tx.ip, now) for entry in entries), key=lambda row: row.chain)
    if tx.session.get_bind().dialect.name == "postgresql":
        # One round trip per row: it runs while the request's row locks (a hot account) are
        # held, and on a busy event loop every extra await lengthens that window.
        for row in rows:
            assert row.content is not None
            await repo.append_linked(tx.session, row, text_digest(row.content))
        return
    await _append_locked(tx, rows)


def new_entry(
    actor: Actor,
    action: str,
    entity_type: str,
    entity_id: object | None,
    *,
    before: Fields | None = None,
    after: Fields | None = None,
) -> _Entry:
    """An audit entry not queued on a unit of work (the ledger engine appends its own, set-based)."""
    return _Entry(
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=None if entity_id is None else str(entity_id),
        before=scrub(before),
        after=scrub(after),
    )


def entry_row(entry: _Entry, request_id: str | None, ip: str | None, now: dt.datetime) -> AuditLog:
    """The row and the canonical text of its content, the exact bytes its hash covers (v3)."""
    row = AuditLog(
        id=repo.new_id(),
        chain=entry.chain,
        actor_id=entry.actor.id,
        actor_type=entry.actor.type,
        action=entry.action,
        entity_type=entry.entity_type,
        entity_id=entry.entity_id,
        before=entry.before,
        after=entry.after,
        request_id=request_id,
        ip=ip,
        created_at=now,
        hash_version=3,
    )
    row.content = canonical(_content(row)).decode()
    return row


async def _append_locked(tx: Tx, rows: list[AuditLog]) -> None:
    """SQLite (one writer at a time): read the head, link the rows in Python, move the head."""
    session = tx.session
    for chain in sorted({row.chain for row in rows}):
        head = await repo.lock_head(session, chain)
        seq, prev = head.last_seq, head.last_hash
        for row in (r for r in rows if r.chain == chain):
            seq += 1
            row.chain_seq, row.prev_hash = seq, prev
            assert row.content is not None
            row.hash = link(prev, seq, text_digest(row.content))
            prev = row.hash
            session.add(row)
        await session.flush()
        await repo.advance_head(session, chain, seq, prev)


BROKEN_LISTED = 1000  # ids listed in one answer; brokenCount counts them all


@dataclass(slots=True)
class VerifyResult:
    valid: bool
    checked: int
    first_broken_id: str | None = None
    broken_ids: list[str] = field(default_factory=list)
    broken_count: int = 0

    def broken(self, row_id: str | None) -> None:
        self.valid = False
        self.broken_count += 1
        if row_id is None:
            return
        if self.first_broken_id is None:
            self.first_broken_id = row_id
        if len(self.broken_ids) < BROKEN_LISTED and row_id not in self.broken_ids:
            self.broken_ids.append(row_id)


async def verify(tx: Tx) -> VerifyResult:
    """Walk every chain to its end: each row's hash, its link to the previous row, no gap, the
    head at the end. A broken row is reported and the walk goes on from the hash it carries,
    so one edit shows as one row and does not hide what comes after it."""
    result = VerifyResult(valid=True, checked=0)
    for head in await repo.heads(tx.session):
        expected_prev, expected_seq, last_id = genesis(head.chain), 1, None
        async for row in repo.chain_rows(tx.session, head.chain):
            result.checked += 1
            broken = row.chain_seq != expected_seq or row.prev_hash != expected_prev or row_hash(row) != row.hash
            if broken:
                result.broken(str(row.id))
            expected_prev, expected_seq, last_id = row.hash, row.chain_seq + 1, str(row.id)
        if head.last_seq != expected_seq - 1 or head.last_hash != expected_prev:
            # The newest rows of this chain are gone: point at the last row still standing.
            result.broken(last_id)
    return result

"""Set-based SQL of the ledger engine (PostgreSQL, asyncpg): a few statements per batch, whatever its size.

Every statement takes arrays (``unnest``), so a batch of 1 and a batch of 500 cost the same
round trips. Lock order, the same in every process: idempotency keys (sorted), accounts
(sorted by user id), audit chain heads (sorted by chain) — two engines never wait on each
other in a cycle, and request transactions take account rows before chain heads too.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

# A new key, or one older than the TTL taken over; a live key returns no row (as kit.idempotency).
CLAIM = """
INSERT INTO idempotency_keys (principal, idem_key, request_hash, created_at)
SELECT p, k, h, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS u(p, k, h)
ON CONFLICT (principal, idem_key) DO UPDATE
    SET request_hash = excluded.request_hash, status_code = NULL, body = NULL, created_at = excluded.created_at
    WHERE idempotency_keys.created_at < $5
RETURNING principal, idem_key
"""
EXISTING = """
SELECT i.principal, i.idem_key, i.request_hash, i.status_code, i.body
FROM idempotency_keys i JOIN unnest($1::text[], $2::text[]) AS u(p, k) ON i.principal = u.p AND i.idem_key = u.k
"""
STORE = """
UPDATE idempotency_keys i SET status_code = u.s, body = u.b
FROM unnest($1::text[], $2::text[], $3::int[], $4::bytea[]) AS u(p, k, s, b)
WHERE i.principal = u.p AND i.idem_key = u.k
"""
# The accounts of the batch, locked in user-id order until commit: nothing else moves them
# between this read and the UPDATE below, so the batch's decisions are made on the truth.
LOCK_ACCOUNTS = """
SELECT user_id, balance, reserved, low_balance_threshold FROM credit_accounts
WHERE user_id = ANY($1::uuid[]) ORDER BY user_id FOR UPDATE
"""
# The conditional UPDATE stays the guard: a net debit only lands if it is still available
# (it always is under the lock above; if not, the batch fails and is retried op by op).
APPLY = """
UPDATE credit_accounts a SET balance = a.balance + u.delta, updated_at = $3
FROM unnest($1::uuid[], $2::bigint[]) AS u(user_id, delta)
WHERE a.user_id = u.user_id AND (u.delta >= 0 OR a.balance - a.reserved >= -u.delta)
"""
# In the batch's order, so each account's seq follows its balance (balance_after chains).
LEDGER = """
INSERT INTO credit_transactions
    (id, user_id, amount, type, reason, balance_after, related_id, idempotency_key, metadata, actor_id, created_at)
SELECT u.id, u.user_id, u.amount, CASE WHEN u.amount > 0 THEN 'credit' ELSE 'debit' END, u.reason,
       u.balance_after, u.related_id, u.idem, u.meta::jsonb, u.actor_id, u.created_at
FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::bigint[], $6::uuid[], $7::text[], $8::text[],
            $9::text[], $10::timestamptz[])
     WITH ORDINALITY AS u(id, user_id, amount, reason, balance_after, related_id, idem, meta, actor_id, created_at, ord)
ORDER BY u.ord
"""
LOCK_HEADS = """
SELECT chain, last_seq, last_hash FROM audit_chain_heads WHERE chain = ANY($1::int[]) ORDER BY chain FOR UPDATE
"""
AUDIT = """
INSERT INTO audit_logs (id, chain, chain_seq, actor_id, actor_type, action, entity_type, entity_id, before, after,
                        request_id, ip, created_at, prev_hash, hash, hash_version, content)
SELECT u.id, u.chain, u.seq, u.actor_id, u.actor_type, u.action, u.entity_type, u.entity_id, u.before::jsonb,
       u.after::jsonb, u.request_id, u.ip, u.created_at, u.prev, u.hash, 3, u.content
FROM unnest($1::uuid[], $2::int[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::text[], $12::text[], $13::timestamptz[], $14::text[], $15::text[],
            $16::text[])
     AS u(id, chain, seq, actor_id, actor_type, action, entity_type, entity_id, before, after, request_id, ip,
          created_at, prev, hash, content)
"""
ADVANCE_HEADS = """
UPDATE audit_chain_heads h SET last_seq = u.seq, last_hash = u.hash, prev_hash = u.prev
FROM unnest($1::int[], $2::bigint[], $3::text[], $4::text[]) AS u(chain, seq, hash, prev)
WHERE h.chain = u.chain
"""


async def claim(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str, str]], now: dt.datetime, cutoff: dt.datetime
) -> set[tuple[str, str]]:
    rows = await conn.fetch(CLAIM, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], now, cutoff)
    return {(r["principal"], r["idem_key"]) for r in rows}


async def existing(conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    rows = await conn.fetch(EXISTING, [k[0] for k in keys], [k[1] for k in keys])
    return {(r["principal"], r["idem_key"]): r for r in rows}


async def store(conn: asyncpg.Connection, outcomes: Sequence[tuple[str, str, int, bytes]]) -> None:
    await conn.execute(STORE, *(list(column) for column in zip(*outcomes, strict=True)))


async def lock_accounts(conn: asyncpg.Connection, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Any]:
    return {r["user_id"]: r for r in await conn.fetch(LOCK_ACCOUNTS, list(user_ids))}


async def apply(conn: asyncpg.Connection, deltas: dict[uuid.UUID, int], now: dt.datetime) -> int:
    status = await conn.execute(APPLY, list(deltas), list(deltas.values()), now)
    return int(status.rsplit(" ", 1)[-1])


async def ledger(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    await conn.execute(LEDGER, *(list(column) for column in zip(*rows, strict=True)))


async def lock_heads(conn: asyncpg.Connection, chains: Sequence[int]) -> dict[int, tuple[int, str]]:
    rows = await conn.fetch(LOCK_HEADS, sorted(chains))
    return {r["chain"]: (int(r["last_seq"]), r["last_hash"]) for r in rows}


async def audit(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    await conn.execute(AUDIT, *(list(column) for column in zip(*rows, strict=True)))


async def advance_heads(conn: asyncpg.Connection, heads: Sequence[tuple[int, int, str, str]]) -> None:
    await conn.execute(ADVANCE_HEADS, *(list(column) for column in zip(*heads, strict=True)))

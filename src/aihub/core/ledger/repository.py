"""Set-based SQL of the ledger engine (PostgreSQL, asyncpg): a few statements per batch, whatever its size.

Every statement takes arrays (``unnest``), so a batch of 1 and a batch of 500 cost the same
round trips. Lock order, the same in every process: idempotency keys (sorted), accounts
(sorted by user id), then what belongs to those accounts (holds, debits, usage windows then
usage counters, a domain's rows), audit chain heads (sorted by chain) — two writers never wait on each other in
a cycle, and request transactions take account rows before chain heads too.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

import asyncpg

from aihub.core.usage import limits

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
# The conditional UPDATE stays the guard: a net fall of ``available`` (balance delta minus
# reserved delta) only lands if it is still available (it always is under the lock above; if
# not, the batch fails and is retried op by op). The CHECKs keep 0 <= reserved <= balance.
APPLY = """
UPDATE credit_accounts a SET balance = a.balance + u.delta, reserved = a.reserved + u.held, updated_at = $4
FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS u(user_id, delta, held)
WHERE a.user_id = u.user_id AND (u.delta - u.held >= 0 OR a.balance - a.reserved >= u.held - u.delta)
"""
# The owners of the holds and debits a batch resolves, read before the accounts are locked
# (an owner never changes); the rows themselves are locked after the accounts.
HOLD_OWNERS = "SELECT id, user_id FROM credit_holds WHERE id = ANY($1::uuid[])"
DEBIT_OWNERS = "SELECT id, user_id FROM credit_transactions WHERE id = ANY($1::uuid[])"
LOCK_HOLDS = """
SELECT id, user_id, amount, captured, status, reason, metadata::text AS meta, expires_at, created_at, resolved_at
FROM credit_holds WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
"""
# The debits being refunded, locked (FOR UPDATE is no UPDATE: the append-only trigger stays
# quiet), each with what earlier refunds already gave back: concurrent refunds of one debit
# queue on the row and each sees the ones committed before it.
LOCK_DEBITS = """
SELECT t.id, t.user_id, t.type, t.amount,
       (SELECT COALESCE(SUM(r.amount), 0) FROM credit_transactions r
        WHERE r.related_id = t.id AND r.reason = 'refund') AS refunded
FROM credit_transactions t WHERE t.id = ANY($1::uuid[]) ORDER BY t.id FOR UPDATE OF t
"""
ADD_HOLDS = """
INSERT INTO credit_holds (id, user_id, amount, captured, status, reason, metadata, expires_at, created_at, resolved_at)
SELECT u.id, u.user_id, u.amount, NULL, 'held', u.reason, u.meta::jsonb, u.expires_at, u.created_at, NULL
FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[])
     AS u(id, user_id, amount, reason, meta, expires_at, created_at)
"""
# Every resolved hold was locked and found 'held' in this transaction: the guard only
# restates it (a mismatch fails the batch, which is then retried op by op).
RESOLVE_HOLDS = """
UPDATE credit_holds h SET status = u.status, captured = u.captured, resolved_at = u.resolved_at
FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::timestamptz[]) AS u(id, status, captured, resolved_at)
WHERE h.id = u.id AND h.status = 'held'
"""
# COPY (binary) for the rows a batch appends: one message for the lot, and no per-value array
# checks on the client (what an INSERT … SELECT FROM unnest of every column spends most on).
# In the batch's order, so each account's seq follows its balance (balance_after chains).
# Each appended column with the type its unnest array takes (jsonb goes as text, cast on insert).
_LEDGER = {
    "id": "uuid",
    "user_id": "uuid",
    "amount": "bigint",
    "type": "text",
    "reason": "text",
    "balance_after": "bigint",
    "related_id": "uuid",
    "idempotency_key": "text",
    "metadata": "jsonb",
    "actor_id": "text",
    "created_at": "timestamptz",
}
LEDGER_COLUMNS = tuple(_LEDGER)
LOCK_HEADS = """
SELECT chain, last_seq, last_hash FROM audit_chain_heads WHERE chain = ANY($1::int[]) ORDER BY chain FOR UPDATE
"""
_AUDIT = {
    "id": "uuid",
    "chain": "int",
    "chain_seq": "bigint",
    "actor_id": "text",
    "actor_type": "text",
    "action": "text",
    "entity_type": "text",
    "entity_id": "text",
    "before": "jsonb",
    "after": "jsonb",
    "request_id": "text",
    "ip": "text",
    "created_at": "timestamptz",
    "prev_hash": "text",
    "hash": "text",
    "content": "text",
    "hash_version": "smallint",
}
AUDIT_COLUMNS = tuple(_AUDIT)
HASH_VERSION = 3  # the rows appended here: their hash covers ``content``


def _advance_heads_sql(first: int) -> str:
    """The heads' UPDATE, its four arrays from parameter ``first`` on."""
    arrays = ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(("int", "bigint", "text", "text")))
    return f"""
UPDATE audit_chain_heads h SET last_seq = u.seq, last_hash = u.hash, prev_hash = u.prev
FROM unnest({arrays}) AS u(chain, seq, hash, prev)
WHERE h.chain = u.chain
"""  # noqa: S608 (built from constants only)


ADVANCE_HEADS = _advance_heads_sql(1)


async def claim(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str, str]], now: dt.datetime, cutoff: dt.datetime
) -> set[tuple[str, str]]:
    rows = await conn.fetch(CLAIM, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], now, cutoff)
    return {(r["principal"], r["idem_key"]) for r in rows}


async def existing(conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], asyncpg.Record]:
    rows = await conn.fetch(EXISTING, [k[0] for k in keys], [k[1] for k in keys])
    return {(r["principal"], r["idem_key"]): r for r in rows}


async def store(conn: asyncpg.Connection, outcomes: Sequence[tuple[str, str, int, bytes]]) -> None:
    await conn.execute(STORE, *(list(column) for column in zip(*outcomes, strict=True)))


async def lock_accounts(conn: asyncpg.Connection, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    return {r["user_id"]: r for r in await conn.fetch(LOCK_ACCOUNTS, list(user_ids))}


async def apply(
    conn: asyncpg.Connection, deltas: dict[uuid.UUID, int], now: dt.datetime, held: dict[uuid.UUID, int] | None = None
) -> int:
    """Add each account's net ``deltas`` to its balance and ``held`` to its reserved credits."""
    held = held or {}
    users = list(deltas.keys() | held.keys())
    status = await conn.execute(APPLY, users, [deltas.get(u, 0) for u in users], [held.get(u, 0) for u in users], now)
    return int(status.rsplit(" ", 1)[-1])


async def owners(conn: asyncpg.Connection, sql: str, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    return {r["id"]: r["user_id"] for r in await conn.fetch(sql, list(ids))}


async def lock_holds(conn: asyncpg.Connection, hold_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    return {r["id"]: r for r in await conn.fetch(LOCK_HOLDS, sorted(set(hold_ids)))}


async def lock_debits(
    conn: asyncpg.Connection, transaction_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, asyncpg.Record]:
    return {r["id"]: r for r in await conn.fetch(LOCK_DEBITS, sorted(set(transaction_ids)))}


async def add_holds(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    await conn.execute(ADD_HOLDS, *(list(column) for column in zip(*rows, strict=True)))


async def resolve_holds(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    status = await conn.execute(RESOLVE_HOLDS, *(list(column) for column in zip(*rows, strict=True)))
    return int(status.rsplit(" ", 1)[-1])


async def ledger(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """``rows``: (id, user_id, amount, reason, balance_after, related_id, idempotency_key,
    metadata JSON text, actor_id, created_at)."""
    await conn.copy_records_to_table("credit_transactions", records=_typed(rows), columns=LEDGER_COLUMNS)


def _typed(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The ledger rows with their ``type`` (LEDGER_COLUMNS), as both ways of appending take them."""
    return [(r[0], r[1], r[2], "credit" if r[2] > 0 else "debit", *r[3:]) for r in rows]


async def lock_heads(conn: asyncpg.Connection, chains: Sequence[int]) -> dict[int, tuple[int, str]]:
    rows = await conn.fetch(LOCK_HEADS, sorted(chains))
    return {r["chain"]: (int(r["last_seq"]), r["last_hash"]) for r in rows}


async def audit(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """``rows``: the AUDIT_COLUMNS but the last (``HASH_VERSION``)."""
    await conn.copy_records_to_table("audit_logs", records=_versioned(rows), columns=AUDIT_COLUMNS)


def _versioned(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [(*row, HASH_VERSION) for row in rows]


async def advance_heads(conn: asyncpg.Connection, heads: Sequence[tuple[int, int, str, str]]) -> None:
    await conn.execute(ADVANCE_HEADS, *(list(column) for column in zip(*heads, strict=True)))


def _append_sql(table: str, columns: dict[str, str], first: int) -> str:
    """INSERT of ``columns`` from one unnest array each (from parameter ``first`` on), in the
    arrays' order (WITH ORDINALITY: a bigserial follows it, as it follows a COPY's)."""
    arrays = ", ".join(f"${first + i}::{'text' if t == 'jsonb' else t}[]" for i, t in enumerate(columns.values()))
    values = ", ".join(f"u.{c}::jsonb" if t == "jsonb" else f"u.{c}" for c, t in columns.items())
    return f"""INSERT INTO {table} ({", ".join(columns)})
    SELECT {values}
    FROM unnest({arrays}) WITH ORDINALITY AS u({", ".join(columns)}, n)
    ORDER BY u.n"""  # noqa: S608 (built from constants only)


# A small batch's writes in one statement, each a data-modifying CTE: the balances (APPLY, its
# count answered), the ledger rows, the audit rows and the chain heads they move, exactly the
# rows the COPYs below append. A round trip costs more than these statements do on a few rows;
# from ONE_STATEMENT_ROWS rows the COPYs cost less (no per-value checks).
_AUDIT_FROM = 5 + len(_LEDGER)
SETTLE = f"""
WITH moved AS ({APPLY} RETURNING 1),
ledger AS ({_append_sql("credit_transactions", _LEDGER, 5)}),
logged AS ({_append_sql("audit_logs", _AUDIT, _AUDIT_FROM)}),
heads AS ({_advance_heads_sql(_AUDIT_FROM + len(_AUDIT))})
SELECT count(*) FROM moved
"""  # noqa: S608 (built from constants only)
ONE_STATEMENT_ROWS = 200  # ledger and audit rows together, below which SETTLE writes them


async def settle(
    conn: asyncpg.Connection,
    deltas: dict[uuid.UUID, int],
    held: dict[uuid.UUID, int],
    now: dt.datetime,
    ledger_rows: Sequence[tuple[Any, ...]],
    audit_rows: Sequence[tuple[Any, ...]],
    heads: Sequence[tuple[int, int, str, str]],
) -> int:
    """A batch's money and audit writes (the heads locked already): :func:`apply`, then
    :func:`ledger`, :func:`audit` and :func:`advance_heads` (``heads``: chain, seq, hash, prev);
    in one statement when the batch is small. The number of accounts updated."""
    users = list(deltas.keys() | held.keys())
    if len(ledger_rows) + len(audit_rows) < ONE_STATEMENT_ROWS:
        return int(
            await conn.fetchval(
                SETTLE,
                users,
                [deltas.get(u, 0) for u in users],
                [held.get(u, 0) for u in users],
                now,
                *_columns(_typed(ledger_rows), len(_LEDGER)),
                *_columns(_versioned(audit_rows), len(_AUDIT)),
                *_columns(heads, 4),
            )
        )
    applied = await apply(conn, deltas, now, held) if users else 0
    if ledger_rows:
        await ledger(conn, ledger_rows)
    if audit_rows:
        await audit(conn, audit_rows)
        await advance_heads(conn, heads)
    return applied


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """``rows`` as ``width`` column arrays (empty ones for no rows), as unnest takes them."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


# ---------------------------------------------------------------------- usage events

USERS = "SELECT id FROM users WHERE id = ANY($1::uuid[])"
# The batch's accepted events, settled (their debit and the balance after it): written once.
# A requestId recorded meanwhile by another writer is skipped, and missing from what returns.
INSERT_EVENTS = """
INSERT INTO usage_events (id, request_id, request_hash, user_id, provider, model, price_id, input_tokens,
                          output_tokens, duration_seconds, credits, reporter_id, metadata, created_at,
                          transaction_id, balance_after)
SELECT u.id, u.request_id, u.request_hash, u.user_id, u.provider, u.model, u.price_id, u.input_tokens,
       u.output_tokens, u.duration_seconds, u.credits, u.reporter_id, u.meta::jsonb, u.created_at, u.tid, u.balance
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::uuid[], $8::bigint[],
            $9::bigint[], $10::numeric[], $11::bigint[], $12::text[], $13::text[], $14::timestamptz[], $15::uuid[],
            $16::bigint[])
     AS u(id, request_id, request_hash, user_id, provider, model, price_id, input_tokens, output_tokens,
          duration_seconds, credits, reporter_id, meta, created_at, tid, balance)
ORDER BY u.request_id
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id
"""
COPY_FROM = 100  # events in a batch from which they go in by COPY (insert_events)
EVENT_COLUMNS = (
    "id",
    "request_id",
    "request_hash",
    "user_id",
    "provider",
    "model",
    "price_id",
    "input_tokens",
    "output_tokens",
    "duration_seconds",
    "credits",
    "reporter_id",
    "metadata",
    "created_at",
    "transaction_id",
    "balance_after",
)
EVENTS_BY_REQUEST_ID = """
SELECT id, request_id, request_hash, credits, balance_after FROM usage_events WHERE request_id = ANY($1::text[])
"""
# A usage batch's first read, in one round trip (a round trip costs more than these reads on a
# small batch): the prices in force of its models ($1, $2), the events already recorded under
# its requestIds ($3), every limit on its users ($4: their own scope's and each of their
# roles', as limits.applicable) and their accounts, locked as LOCK_ACCOUNTS locks them.
OPEN_USAGE = """
SELECT
  ARRAY(SELECT ROW(p.provider, p.model, p.id, p.input_per_1k, p.output_per_1k, p.per_request, p.per_second)
        FROM unnest($1::text[], $2::text[]) AS k(provider, model)
             JOIN model_prices p ON p.provider = k.provider AND p.model = k.model AND p.effective_to IS NULL),
  ARRAY(SELECT ROW(e.id, e.request_id, e.request_hash, e.credits, e.balance_after)
        FROM usage_events e WHERE e.request_id = ANY($3::text[])),
  ARRAY(SELECT ROW(l.uid, l.scope, l.period, l.model, l.max_credits, l.max_tokens, l.max_requests)
        FROM (SELECT u.uid, q.scope, q.period, q.model, q.max_credits, q.max_tokens, q.max_requests, q.position
              FROM unnest($4::uuid[]) AS u(uid) JOIN quota_limits q ON q.scope = 'user:' || u.uid::text
              UNION ALL
              SELECT r.user_id, q.scope, q.period, q.model, q.max_credits, q.max_tokens, q.max_requests, q.position
              FROM user_roles r JOIN quota_limits q ON q.scope = 'role:' || r.role_name
              WHERE r.user_id = ANY($4::uuid[])) AS l
        ORDER BY l.uid, l.scope, l.position),
  ARRAY(SELECT ROW(a.user_id, a.balance, a.reserved, a.low_balance_threshold) FROM credit_accounts a
        WHERE a.user_id = ANY($4::uuid[]) ORDER BY a.user_id FOR UPDATE)
"""


def _add_windows_sql() -> str:
    """The wide rows' upsert (``limits.UPSERT_RULE``, the per-event path's): the batch's
    increments per (subject, model), summed by the caller, each put in every period's window
    of the batch's moment ($6 … the keys, then the latest end). In row order: their locks."""
    columns, values = ["subject", "model"], ["u.s", "u.m"]
    for i, period in enumerate(limits.PERIODS):
        columns += [f"{period}_key", *(f"{period}_{f}" for f in limits.FIELDS)]
        values += [f"${6 + i}::text", "u.c", "u.t", "u.r"]
    columns.append("ends_at")
    values.append(f"${6 + len(limits.PERIODS)}::timestamptz")
    rule = ",\n    ".join(f"{column} = {expr}" for column, expr in limits.UPSERT_RULE.items())
    # Built from constants only (the periods' column names and the rule): no value is spliced in.
    return f"""
INSERT INTO usage_windows ({", ".join(columns)})
SELECT {", ".join(values)}
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) AS u(s, m, c, t, r)
ORDER BY u.s, u.m
ON CONFLICT (subject, model) DO UPDATE SET
    {rule}
RETURNING {", ".join(limits.RETURNED)}
"""  # noqa: S608


ADD_WINDOWS = _add_windows_sql()
# What the wide rows did not take, the windows they rolled out and backdated events, each row
# once and in row order (the narrow rows' locks, after the wide ones'); then the totals of the
# narrow rows asked for ($8-$10): the upserted ones as they are now, the others as of this
# statement, which starts after the wide rows' locks are ours (every writer of a narrow row
# holds its wide row), so nothing committed is missed.
ADD_COUNTERS = """
WITH up AS (
INSERT INTO usage_counters (subject, period_key, model, credits, tokens, requests, period_end)
SELECT u.s, u.k, u.m, u.c, u.t, u.r, u.e
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::timestamptz[])
     AS u(s, k, m, c, t, r, e)
ORDER BY u.s, u.k, u.m
ON CONFLICT (subject, period_key, model) DO UPDATE
    SET credits = usage_counters.credits + excluded.credits, tokens = usage_counters.tokens + excluded.tokens,
        requests = usage_counters.requests + excluded.requests
RETURNING subject, period_key, model, credits, tokens, requests
)
SELECT w.s, w.k, w.m, COALESCE(up.credits, c.credits, 0), COALESCE(up.tokens, c.tokens, 0),
       COALESCE(up.requests, c.requests, 0)
FROM unnest($8::text[], $9::text[], $10::text[]) AS w(s, k, m)
     LEFT JOIN up ON up.subject = w.s AND up.period_key = w.k AND up.model = w.m
     LEFT JOIN usage_counters c ON c.subject = w.s AND c.period_key = w.k AND c.model = w.m
"""
DROP_EVENTS = "DELETE FROM usage_events WHERE id = ANY($1::uuid[])"


async def existing_users(conn: asyncpg.Connection, user_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    return {uuid.UUID(str(r["id"])) for r in await conn.fetch(USERS, list(user_ids))}


@dataclass(frozen=True, slots=True)
class Price:
    """A price in force, as the writer reads it (``pricing.Rates``)."""

    id: uuid.UUID
    input_per_1k: Decimal
    output_per_1k: Decimal
    per_request: Decimal
    per_second: Decimal


async def insert_events(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> set[str]:
    """The requestIds inserted (a row whose requestId is taken is not): ``rows`` in
    EVENT_COLUMNS order.

    COPY first, in a savepoint: the batch's requestIds were looked up under the same locks, so
    one taken since (by another process's writer) is rare, and COPY writes the lot for less than
    an INSERT … ON CONFLICT does (no speculative insertion, no per-value array encoding). When
    one is taken, the COPY alone is undone and the INSERT skips what is taken. A small batch
    (single events) goes straight to the INSERT: one round trip, where the savepoint costs two
    more than the COPY saves. Sorted by requestId either way: two writers insert shared ones in
    one order, never in a cycle."""
    ordered = sorted(rows, key=_request_id)
    if len(ordered) < COPY_FROM:
        return await _insert_skipping_taken(conn, ordered)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("usage_events", records=ordered, columns=EVENT_COLUMNS)
    except asyncpg.UniqueViolationError:
        return await _insert_skipping_taken(conn, ordered)
    return {row[1] for row in ordered}


async def _insert_skipping_taken(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> set[str]:
    found = await conn.fetch(INSERT_EVENTS, *(list(column) for column in zip(*rows, strict=True)))
    return {r[0] for r in found}


def _request_id(row: tuple[Any, ...]) -> str:
    return str(row[1])


class Recorded(NamedTuple):
    """An event already recorded under a requestId: what its replay answers."""

    id: uuid.UUID
    request_id: str
    request_hash: str
    credits: int
    balance_after: int | None


# An account as the batch locked it: (balance, reserved, low-balance threshold).
Locked = tuple[int, int, int | None]


@dataclass(frozen=True, slots=True)
class Opened:
    """What a usage batch reads first (OPEN_USAGE)."""

    prices: dict[tuple[str, str], Price]
    recorded: dict[str, Recorded]
    limits: dict[uuid.UUID, list[limits.Applicable]]  # every user asked for (an empty list: none)
    accounts: dict[uuid.UUID, Locked]  # the ones that exist, locked until commit


async def open_usage(
    conn: asyncpg.Connection,
    models: Sequence[tuple[str, str]],
    request_ids: Sequence[str],
    user_ids: Sequence[uuid.UUID],
) -> Opened:
    """The batch's prices, replays, limits and locked accounts: OPEN_USAGE (``user_ids`` sorted)."""
    row = await conn.fetchrow(
        OPEN_USAGE, [m[0] for m in models], [m[1] for m in models], list(request_ids), list(user_ids)
    )
    assert row is not None
    prices = {(p[0], p[1]): Price(*p[2:]) for p in row[0]}
    recorded = {r[1]: Recorded(*r) for r in row[1]}
    found: dict[uuid.UUID, list[limits.Applicable]] = {uid: [] for uid in user_ids}
    for uid, scope, period, model, max_credits, max_tokens, max_requests in row[2]:
        subject = limits.user_subject(uid)
        found[uid].append(limits.Applicable(scope, period, model, max_credits, max_tokens, max_requests, subject))
    accounts = {a[0]: (int(a[1]), int(a[2]), a[3]) for a in row[3]}
    return Opened(prices, recorded, found, accounts)


async def events_by_request_id(conn: asyncpg.Connection, request_ids: Sequence[str]) -> dict[str, Recorded]:
    return {r[1]: Recorded(*r) for r in await conn.fetch(EVENTS_BY_REQUEST_ID, list(request_ids))}


async def add_windows(
    conn: asyncpg.Connection,
    increments: Sequence[tuple[str, str, int, int, int]],
    windows: Mapping[str, limits.Window],
) -> list[asyncpg.Record]:
    """``increments``: (subject, model, credits, tokens, requests), one per wide row, sorted;
    ``windows``: the batch moment's, by period. The rows after the upsert (``limits.RETURNED``)."""
    keys = [windows[period].key for period in limits.PERIODS]
    end = max(w.end for w in windows.values())
    return list(await conn.fetch(ADD_WINDOWS, *(list(column) for column in zip(*increments, strict=True)), *keys, end))


async def add_counters(
    conn: asyncpg.Connection,
    rows: Sequence[tuple[limits.Row, limits.Amounts, dt.datetime]],
    totals_of: Sequence[limits.Row],
) -> dict[limits.Row, limits.Amounts]:
    """Add to the narrow rows ``rows`` ((subject, period key, model), amounts, window end; each
    once, sorted). Returns the narrow totals of ``totals_of`` (0 where there is no row)."""
    columns: list[list[Any]] = [[], [], [], [], [], [], []]
    for (subject, key, model), (c, t, r), end in rows:
        for column, value in zip(columns, (subject, key, model, c, t, r, end), strict=True):
            column.append(value)
    found = await conn.fetch(
        ADD_COUNTERS,
        *columns,
        [row[0] for row in totals_of],
        [row[1] for row in totals_of],
        [row[2] for row in totals_of],
    )
    return {(r[0], r[1], r[2]): (int(r[3]), int(r[4]), int(r[5])) for r in found}


async def drop_events(conn: asyncpg.Connection, event_ids: Sequence[uuid.UUID]) -> None:
    await conn.execute(DROP_EVENTS, list(event_ids))


async def recompute_rollup_day(conn: asyncpg.Connection, day: dt.date) -> None:
    """The rollup job's recompute of ``day`` (same lock, same statements), on this connection."""
    from sqlalchemy.dialects import postgresql

    from aihub.core.usage import rollups

    await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", *rollups.lock_key(day))
    dialect = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
    for stmt in rollups.recompute_statements("postgresql", day):
        compiled = stmt.compile(dialect=dialect)
        await conn.execute(compiled.string, *(compiled.params[name] for name in compiled.positiontup or ()))

"""Usage events through the ledger engine (PostgreSQL): a whole batch in a handful of statements.

What ``usage.service.record_event`` does per event, done for every event of the batch at once,
in one transaction, with the same outcome per event:

    claim the requestIds (one INSERT … ON CONFLICT DO NOTHING) → replays of the ones taken →
    lock the batch's counters (one upsert of zeros, sorted) and accounts (sorted) → walk the
    events in order against the running counters and balances (quota, then credits) → one
    upsert of the counted increments, one UPDATE of the net debits (still conditional), the
    ledger rows, the settled usage rows, the refused claims removed, the audit rows linked →
    the rollups of any backdated day already rolled up, recomputed → COMMIT.

The event's price is resolved before it is queued (the request's own read); everything that
writes happens here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from aihub.core.audit import service as audit
from aihub.core.credits import repository as credits_repo
from aihub.core.credits import service as credits
from aihub.core.ledger import repository as repo
from aihub.core.ledger.engine import LedgerEngine, Outcome, _append_audit, _refused
from aihub.core.usage import limits, rollups
from aihub.core.usage import service as usage
from aihub.kit.db import utcnow
from aihub.kit.idempotency import IdempotencyKeyReused
from aihub.kit.jsonutil import dumps

MAX_EVENTS = 2000  # per transaction: a 1,000-event request and whatever single events queued


@dataclass(slots=True)
class UsageOp:
    """One priced usage event, ready to be claimed, counted and charged."""

    request_id: str
    request_hash: str
    user_id: uuid.UUID
    provider: str
    model: str
    price_id: uuid.UUID
    input_tokens: int
    output_tokens: int
    duration_seconds: Decimal | None
    charge: int
    reporter_id: str
    metadata: dict[str, Any] | None
    occurred_at: dt.datetime | None = None
    actor: audit.Actor = field(default_factory=lambda: audit.SYSTEM)
    request: str | None = None  # the HTTP request's id (audit rows)
    ip: str | None = None
    policy: credits.Policy = credits.NO_ALERTS
    future: asyncio.Future[Outcome] | None = field(default=None, repr=False)


def _ident(op: UsageOp) -> str:
    return op.request_id


def writer(engine: AsyncEngine) -> LedgerEngine:
    return LedgerEngine(engine, max_batch=MAX_EVENTS, apply=apply_events, ident=_ident)


@dataclass(slots=True)
class _Account:
    balance: int
    reserved: int
    threshold: int | None


def _result(event_id: Any, request_id: str, charge: int, balance: int) -> dict[str, Any]:
    return {"id": event_id, "request_id": request_id, "credits": charge, "balance": balance}


async def apply_events(conn: asyncpg.Connection, ops: list[UsageOp]) -> dict[int, Outcome]:
    now = utcnow()
    outcomes: dict[int, Outcome] = {}
    ids = {id(op): uuid.uuid4() for op in ops}
    known = await repo.existing_users(conn, sorted({op.user_id for op in ops}))
    for op in ops:
        if op.user_id not in known:
            outcomes[id(op)] = _refused(credits.AccountNotFound())
    candidates = [op for op in ops if id(op) not in outcomes]
    claimed_ids = await repo.claim_events(conn, [_event_row(op, ids[id(op)], now) for op in candidates])
    lost = [op for op in candidates if op.request_id not in claimed_ids]
    if lost:
        found = await repo.events_by_request_id(conn, [op.request_id for op in lost])
        for op in lost:
            row = found.get(op.request_id)
            if row is None:  # the original rolled back between our insert and this read
                outcomes[id(op)] = _refused(usage.RequestInProgress())
            elif row["request_hash"] != op.request_hash:
                outcomes[id(op)] = _refused(IdempotencyKeyReused("This requestId was reported with different content"))
            else:
                balance = row["balance_after"] if row["balance_after"] is not None else 0
                view = _result(row["id"], op.request_id, int(row["credits"]), int(balance))
                outcomes[id(op)] = Outcome(201, view=view, replayed=True)
    live = [op for op in candidates if op.request_id in claimed_ids]
    if not live:
        return outcomes

    # Counters: every row each event counts toward (its own periods, from when it occurred).
    rows_of: dict[int, list[limits.Row]] = {}
    ends: dict[limits.Row, dt.datetime] = {}
    windows: dict[dt.datetime, list[limits.Window]] = {}
    for op in live:
        when = op.occurred_at or now
        spans = windows.get(when)
        if spans is None:
            spans = windows[when] = [limits.window(kind, when) for kind in limits.PERIODS]
        subject, model = limits.user_subject(op.user_id), f"{op.provider}/{op.model}"
        mine = rows_of[id(op)] = []
        for w in spans:
            for m in (limits.ALL_MODELS, model):
                row = (subject, w.key, m)
                mine.append(row)
                ends[row] = w.end
    applying = await repo.applicable_limits(conn, sorted({op.user_id for op in live}))
    limited = {uid for uid, found in applying.items() if found}
    # Only the counters a limit reads need their totals (and their locks) before deciding.
    watched = sorted({row for op in live if op.user_id in limited for row in rows_of[id(op)]})
    running = await repo.lock_counters(conn, [(row, ends[row]) for row in watched]) if watched else {}
    accounts = {
        uid: _Account(int(r["balance"]), int(r["reserved"]), r["low_balance_threshold"])
        for uid, r in (await repo.lock_accounts(conn, sorted({op.user_id for op in live}))).items()
    }

    increments: dict[limits.Row, list[int]] = {}
    deltas: dict[uuid.UUID, int] = {}
    ledger_rows: list[tuple[Any, ...]] = []
    settled: list[tuple[uuid.UUID, uuid.UUID | None, int]] = []
    refused: list[uuid.UUID] = []
    audit_rows: list[Any] = []
    days: set[dt.date] = set()
    for op in live:
        event_id = ids[id(op)]
        tokens = op.input_tokens + op.output_tokens
        when = op.occurred_at or now
        mine = rows_of[id(op)]
        if op.user_id in limited:
            for row in mine:
                credits_used, tokens_used, requests_used = running.get(row, (0, 0, 0))
                running[row] = (credits_used + op.charge, tokens_used + tokens, requests_used + 1)
            passed = limits.first_passed(_for_model(applying[op.user_id], op), running, when)
            if passed is not None:
                _undo(running, mine, op.charge, tokens)
                details: dict[str, Any] = {
                    "scope": passed.scope,
                    "period": passed.period,
                    "model": passed.model or None,
                    "resetsAt": limits.window(passed.period, when).end.isoformat(),
                }
                outcomes[id(op)] = _refused(usage.QuotaExceeded(details=details))
                refused.append(event_id)
                continue
        account = accounts.get(op.user_id)
        if account is None:
            if op.user_id in limited:
                _undo(running, mine, op.charge, tokens)
            outcomes[id(op)] = _refused(credits.AccountNotFound())
            refused.append(event_id)
            continue
        if op.charge > account.balance - account.reserved:
            if op.user_id in limited:
                _undo(running, mine, op.charge, tokens)
            short = {
                "balance": account.balance,
                "available": account.balance - account.reserved,
                "required": op.charge,
            }
            outcomes[id(op)] = _refused(credits.InsufficientCredits(details=short))
            refused.append(event_id)
            continue
        for row in mine:
            add = increments.setdefault(row, [0, 0, 0])
            add[0] += op.charge
            add[1] += tokens
            add[2] += 1
        transaction_id: uuid.UUID | None = None
        after: credits_repo.Balance | None = None
        if op.charge > 0:
            transaction_id = uuid.uuid4()
            account.balance -= op.charge
            deltas[op.user_id] = deltas.get(op.user_id, 0) - op.charge
            meta = {
                "usageEventId": str(event_id),
                "requestId": op.request_id,
                "provider": op.provider,
                "model": op.model,
            }
            ledger_rows.append(
                (
                    transaction_id,
                    op.user_id,
                    -op.charge,
                    "usage",
                    account.balance,
                    None,
                    None,
                    dumps(meta).decode(),
                    op.actor.id,
                    now,
                )
            )
            after = credits_repo.Balance(op.user_id, account.balance, account.reserved, account.threshold)
            debit = audit.new_entry(
                op.actor,
                "credits.debit.usage",
                "credit_account",
                op.user_id,
                before={"balance": account.balance + op.charge},
                after={"balance": account.balance, "reserved": account.reserved, "transactionId": str(transaction_id)},
            )
            audit_rows.append(audit.pending_row(debit, op.request, op.ip, now))
        settled.append((event_id, transaction_id, account.balance))
        record = audit.new_entry(
            op.actor,
            "usage.record",
            "usage_event",
            event_id,
            after={
                "requestId": op.request_id,
                "userId": str(op.user_id),
                "provider": op.provider,
                "model": op.model,
                "credits": op.charge,
                "priceId": str(op.price_id),
            },
        )
        audit_rows.append(audit.pending_row(record, op.request, op.ip, now))
        view = _result(event_id, op.request_id, op.charge, account.balance)
        outcomes[id(op)] = Outcome(201, view=view, after=after, debited=op.charge)
        if op.occurred_at is not None:
            days.add(op.occurred_at.date())

    if increments:
        await repo.add_counters(conn, [(row, ends[row], *add) for row, add in sorted(increments.items())])
    if deltas:
        if await repo.apply(conn, deltas, now) != len(deltas):
            raise RuntimeError("a locked account did not take its batch delta")
        await repo.ledger(conn, ledger_rows)
    if settled:
        await repo.settle_events(conn, settled)
    if refused:
        await repo.drop_events(conn, refused)
    if audit_rows:
        await _append_audit(conn, audit_rows)
    if days:
        await _roll_backdated(conn, days)
    return outcomes


def _for_model(found: list[limits.Applicable], op: UsageOp) -> list[limits.Applicable]:
    model = f"{op.provider}/{op.model}"
    return [a for a in found if a.model in (limits.ALL_MODELS, model)]


def _undo(running: dict[limits.Row, tuple[int, int, int]], rows: list[limits.Row], charge: int, tokens: int) -> None:
    for row in rows:
        credits_used, tokens_used, requests_used = running[row]
        running[row] = (credits_used - charge, tokens_used - tokens, requests_used - 1)


def _event_row(op: UsageOp, event_id: uuid.UUID, now: dt.datetime) -> tuple[Any, ...]:
    return (
        event_id,
        op.request_id,
        op.request_hash,
        op.user_id,
        op.provider,
        op.model,
        op.price_id,
        op.input_tokens,
        op.output_tokens,
        op.duration_seconds,
        op.charge,
        op.reporter_id,
        None if op.metadata is None else dumps(op.metadata).decode(),
        op.occurred_at or now,
    )


async def _roll_backdated(conn: asyncpg.Connection, days: set[dt.date]) -> None:
    """Backdated events on a day the rollups already cover: recompute that day, as the job would."""
    mark = await conn.fetchval("SELECT complete_until FROM usage_rollup_state WHERE name = $1", rollups.STATE)
    for day in sorted(d for d in days if mark is not None and d < mark):
        await repo.recompute_rollup_day(conn, day)
